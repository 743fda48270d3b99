#!/usr/bin/env python3
"""Checks a Prometheus text exposition (format 0.0.4), such as coinfeed's /metrics page, with the
Prometheus project's own Python parser and the stricter rules that parser lets pass.

    check.py [FILE]       the page from FILE, or from stdin without one (or with "-")
    check.py --self-test  proves each strict rule refuses a page that breaks it

The official parser (prometheus_client.parser.text_string_to_metric_families) is lenient: a
sample outside its family becomes an untyped family of its own, and a repeated family or a
duplicate series is not an error. So this script also holds, line by line: every family is one
group (HELP at most once, then exactly one TYPE, before any of its samples), never declared
again; every sample belongs to the family declared just before it; names and label names are
valid; counters end in _total; no series (name and labels) appears twice; no two families share
a name once a counter's _total is set aside (OpenMetrics would refuse that page). Prints
"ok <families> families <samples> samples" and exits 0, or prints the problem and exits 1.

Needs prometheus_client: tests/prom/install.sh puts it into target/prom-venv.
"""

import re
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("check.py: prometheus_client is missing: run tests/prom/install.sh, then target/prom-venv/bin/python")
    sys.exit(2)

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# The sample names each type's family may hold, as suffixes of the family's name.
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "summary": ("", "_count", "_sum"),
    "histogram": ("_bucket", "_count", "_sum"),
}


class Problem(Exception):
    """What is wrong with the page, with the line when there is one."""


def strict(text):
    """The line-level rules; returns the number of sample lines."""
    if not text.endswith("\n"):
        raise Problem("the last line does not end with a line feed")
    if "\r" in text:
        raise Problem("a carriage return: lines end with a line feed only")
    current = None  # the family whose group the lines are in
    types = {}  # family -> its TYPE
    helped = set()
    closed = set()  # families whose group has ended
    samples = 0
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        where = f"line {number}: {line!r}"
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) < 2 or parts[1] not in ("HELP", "TYPE"):
                continue  # a plain comment
            if len(parts) < 3 or not METRIC_NAME.fullmatch(parts[2]):
                raise Problem(f"{where}: no valid metric name")
            name = parts[2]
            if name in closed:
                raise Problem(f"{where}: family {name} declared again after its group ended")
            if name != current:
                if current is not None:
                    closed.add(current)
                current = name
            if parts[1] == "HELP":
                if name in helped:
                    raise Problem(f"{where}: second HELP for {name}")
                if name in types:
                    raise Problem(f"{where}: HELP for {name} after its TYPE")
                helped.add(name)
            else:
                if name in types:
                    raise Problem(f"{where}: second TYPE for {name}")
                if len(parts) != 4 or parts[3] not in SUFFIXES:
                    raise Problem(f"{where}: TYPE must be one of {', '.join(sorted(SUFFIXES))}")
                types[name] = parts[3]
                if parts[3] == "counter" and not name.endswith("_total"):
                    raise Problem(f"{where}: counter {name} does not end in _total")
            continue
        if line.strip() == "":
            continue
        match = METRIC_NAME.match(line)
        if not match:
            raise Problem(f"{where}: a sample without a valid metric name")
        name = match.group(0)
        if current is None or current not in types:
            raise Problem(f"{where}: sample {name} before any TYPE line of its family")
        if not any(name == current + suffix for suffix in SUFFIXES[types[current]]):
            raise Problem(f"{where}: sample {name} outside its family's group (in {current}'s)")
        samples += 1
    return samples


def check(text):
    """Both checks; returns (families, samples) or raises Problem."""
    sample_lines = strict(text)
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise Problem(f"the official parser refused the page: {e}") from e
    seen_families = {}
    series = set()
    samples = 0
    for family in families:
        if family.type == "untyped":
            raise Problem(f"the official parser found an untyped family {family.name}")
        if family.name in seen_families:
            raise Problem(
                f"family name {family.name} used twice ({seen_families[family.name]} and {family.type}),"
                " once counters' _total is set aside"
            )
        seen_families[family.name] = family.type
        for sample in family.samples:
            for label in sample.labels:
                if not LABEL_NAME.match(label) or label.startswith("__"):
                    raise Problem(f"invalid label name {label!r} in {sample.name}")
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in series:
                raise Problem(f"series {sample.name}{dict(sample.labels)} appears twice")
            series.add(key)
            samples += 1
    if samples != sample_lines:
        raise Problem(f"the official parser read {samples} samples from {sample_lines} sample lines")
    return len(families), samples


GOOD = """# HELP a_total A counter, with an escaped \\\\ and \\n.
# TYPE a_total counter
a_total 1
# HELP g A gauge.
# TYPE g gauge
g{worker="0"} 2.5
g{worker="1",symbol_id="x\\"y\\\\z\\nw"} -3
# TYPE h gauge
h 0
"""

# Each page breaks one rule; the problem's text must contain the expectation.
BAD = [
    ("no final line feed", "# TYPE g gauge\ng 1", "line feed"),
    ("no TYPE", "g 1\n", "before any TYPE"),
    ("TYPE after the samples", "g 1\n# TYPE g gauge\n", "before any TYPE"),
    ("two TYPEs", "# TYPE g gauge\n# TYPE g gauge\ng 1\n", "second TYPE"),
    ("two HELPs", "# HELP g a\n# HELP g b\n# TYPE g gauge\ng 1\n", "second HELP"),
    ("HELP after TYPE", "# TYPE g gauge\n# HELP g a\ng 1\n", "after its TYPE"),
    ("sample of another family", "# TYPE g gauge\n# TYPE h gauge\ng 1\n", "outside its family"),
    ("family repeated", "# TYPE g gauge\ng 1\n# TYPE h gauge\nh 1\n# TYPE g gauge\ng{a=\"b\"} 2\n", "declared again"),
    ("counter without _total", "# TYPE c counter\nc 1\n", "_total"),
    ("duplicate series", "# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"1\"} 2\n", "twice"),
    ("same family name", "# TYPE x_total counter\nx_total 1\n# TYPE x gauge\nx 1\n", "used twice"),
    ("invalid metric name", "# TYPE 9g gauge\n9g 1\n", "valid metric name"),
    ("unknown type", "# TYPE g meter\ng 1\n", "TYPE must be"),
    ("not a number", "# TYPE g gauge\ng one\n", "official parser refused"),
    ("unescaped quote", '# TYPE g gauge\ng{a="x"y"} 1\n', "official parser refused"),
    ("carriage return", "# TYPE g gauge\r\ng 1\r\n", "carriage return"),
]


def self_test():
    failures = []
    try:
        check(GOOD)
    except Problem as e:
        failures.append(f"the good page was refused: {e}")
    for what, page, expected in BAD:
        try:
            check(page)
            failures.append(f"{what}: accepted")
        except Problem as e:
            if expected not in str(e):
                failures.append(f"{what}: refused for another reason: {e}")
    for failure in failures:
        print(f"self-test: {failure}")
    if failures:
        return 1
    print(f"self-test ok: the good page passes, {len(BAD)} bad pages refused for the expected reason")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) > 2:
        print(__doc__.strip().split("\n\n")[1])
        return 2
    path = argv[1] if len(argv) == 2 else "-"
    # Bytes, decoded here: Python's text mode would turn a "\r\n" into "\n" and hide it.
    if path == "-":
        raw = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        print(f"{path if path != '-' else 'stdin'}: not UTF-8: {e}")
        return 1
    try:
        families, samples = check(text)
    except Problem as e:
        print(f"{path if path != '-' else 'stdin'}: {e}")
        return 1
    print(f"ok {families} families {samples} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
