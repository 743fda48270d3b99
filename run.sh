#!/usr/bin/env bash
# coinfeed's entry points for people and CI. Needs a Rust toolchain (cargo, rustfmt, clippy), and
# for the tests python3 with venv and PyPI.
#
#   ./run.sh [ARGS...]   build in release mode and run the pipeline: against CoinAPI when
#                        COINAPI_KEY is set, otherwise against the built-in simulator (--sim).
#                        NDJSON on stdout, logs and health on stderr, until Ctrl-C.
#                        ARGS are passed to coinfeed (see ./run.sh --help).
#   ./run.sh test        cargo fmt --check, clippy with -D warnings, and the whole test suite
#                        (installs the Prometheus parser its tests use into target/prom-venv).
#   ./run.sh kafka-test  the Kafka sink's tests (cargo feature `kafka`) against a real broker:
#                        tansu, built into target/kafka-tools by tests/kafka/install.sh when missing
#                        (some 45 CPU-minutes the first time), started on a free loopback port.
#   ./run.sh bench       criterion micro benches and the end-to-end bench (cargo bench).
#   ./run.sh fuzz [--runs N] [--seconds S] [TARGET...]
#                        the long fuzz run: each target (all when none is named) in turn for N
#                        executions (default 10,000,000), or S seconds if that comes first
#                        (--seconds alone: S seconds however many runs), from its committed seeds
#                        (fuzz/seeds/) and its working corpus (target/fuzz-corpus/); prints each
#                        target's executions, exec/s, cov, ft, corpus size and crash / no crash.
#                        cargo-fuzz is built into target/fuzz-tools by tests/fuzz/install.sh.
#   ./run.sh fuzz-smoke  fmt and clippy on the fuzz crate, then every fuzz target for 15 s from its
#                        seeds (CI); fails on a lint or any crash.
#   ./run.sh soak [--minutes M | --seconds S] [--rate R] [--symbols N] [--slow-reader-us U] [--out DIR]
#                        soak (or, with --slow-reader-us, overload) run of the release binary
#                        against the simulator: CSV, RSS chart (SVG) and a summary; exits non-zero
#                        when memory drifts, messages are dropped or the connection is lost.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# Default symbols for a real run when the caller names none.
DEFAULT_SYMBOLS="BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD"

# The Kafka sink is an opt-in cargo feature (librdkafka takes minutes to compile): built when
# COINFEED_FEATURES=kafka is set or a --kafka-brokers flag is given.
build_release() {
    local features=${COINFEED_FEATURES:-}
    if [[ " $* " == *" --kafka-brokers"* ]]; then
        features=kafka
    fi
    cargo build --release --locked --quiet --bin coinfeed ${features:+--features "$features"} >&2
}

# The fuzz targets (fuzz/, outside the workspace): built by cargo fuzz with AddressSanitizer on
# the stable toolchain (RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags cargo fuzz passes),
# then each binary run directly so its libFuzzer flags and output are ours. Leak detection is on
# (AddressSanitizer's default); a crash, leak, timeout (-timeout=10 s) or out-of-memory
# (-rss_limit_mb=2048) leaves its input in target/fuzz-artifacts/<target>/ and fails the run.
fuzz_main() {
    local cargo_fuzz target_dir bin_dir all=(frame rest_body book decimal record config resume)
    [[ $# -gt 0 ]] || set -- "${all[@]}"
    cargo_fuzz=$(tests/fuzz/install.sh)
    target_dir=${CARGO_TARGET_DIR:-$PWD/target}
    echo "== cargo fuzz build (every target; AddressSanitizer)" >&2
    (cd fuzz && RUSTC_BOOTSTRAP=1 "$cargo_fuzz" build --target-dir "$target_dir/fuzz" >&2)
    bin_dir=$target_dir/fuzz/x86_64-unknown-linux-gnu/release
    mkdir -p "$target_dir/fuzz-logs"
    local failed=() t log corpus artifacts started status
    for t in "$@"; do
        corpus=$target_dir/fuzz-corpus/$t
        artifacts=$target_dir/fuzz-artifacts/$t
        log=$target_dir/fuzz-logs/$t.log
        mkdir -p "$corpus" "$artifacts"
        echo "== fuzz $t (${runs:+$runs runs}${seconds:+$seconds s}; log $log)" >&2
        started=$SECONDS
        status=0
        "$bin_dir/$t" "$corpus" "fuzz/seeds/$t" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
            -artifact_prefix="$artifacts/" ${runs:+-runs=$runs} ${seconds:+-max_total_time=$seconds} \
            >"$log" 2>&1 || status=$?
        fuzz_summary "$t" "$log" $((SECONDS - started)) "$status" "$corpus"
        [[ $status -eq 0 ]] || failed+=("$t")
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "fuzz: crashed: ${failed[*]} (inputs in $target_dir/fuzz-artifacts/, logs in $target_dir/fuzz-logs/)" >&2
        return 1
    fi
}

# One line per target from libFuzzer's final stats and its last status line.
fuzz_summary() {
    local t=$1 log=$2 wall_s=$3 status=$4 corpus=$5 execs rate last verdict
    execs=$(sed -n 's/^stat::number_of_executed_units: //p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    verdict="no crash"
    [[ $status -eq 0 ]] || verdict="CRASH (exit $status; see $log)"
    # corp: libFuzzer's corpus at the end (units/bytes); files: what the working corpus holds.
    printf '%-10s execs=%s exec/s=%s wall=%ss cov=%s ft=%s corp=%s (%s files)  %s\n' "$t" "${execs:-?}" "${rate:-?}" \
        "$wall_s" "$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")" "$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")" \
        "$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")" "$(find "$corpus" -type f | wc -l)" "$verdict"
}

case "${1:-}" in
test)
    shift
    echo "== cargo fmt --check" >&2
    cargo fmt --all -- --check
    echo "== cargo clippy --workspace --all-targets -D warnings" >&2
    cargo clippy --locked --workspace --all-targets -- -D warnings
    # The Prometheus project's own parser (the official Python client, from PyPI), which the
    # metrics endpoint's tests hold every page to: installed into target/prom-venv when missing.
    echo "== the Prometheus parser (tests/prom/install.sh)" >&2
    tests/prom/install.sh >/dev/null
    echo "== cargo test" >&2
    cargo test --locked --workspace --all-targets "$@"
    ;;
kafka-test)
    shift
    echo "== the Kafka broker (tests/kafka/install.sh)" >&2
    tansu=$(tests/kafka/install.sh)
    echo "== cargo clippy --features kafka -D warnings" >&2
    cargo clippy --locked --all-targets --features kafka -- -D warnings
    echo "== cargo test --features kafka (the sink's unit tests, then the broker scenarios)" >&2
    cargo test --locked --features kafka --lib kafka
    COINFEED_TANSU="$tansu" cargo test --locked --features kafka --test it kafka:: "$@" -- --test-threads 1
    ;;
bench)
    shift
    cargo bench --locked --bench decode --bench book --bench e2e "$@"
    ;;
fuzz | fuzz-smoke)
    mode=$1
    shift
    runs=10000000
    seconds=
    if [[ $mode == fuzz-smoke ]]; then
        runs=
        seconds=15
        # The fuzz crate is outside the workspace, so `./run.sh test`'s fmt and clippy miss it.
        echo "== cargo fmt --check, cargo clippy -D warnings (the fuzz crate)" >&2
        clippy_dir=${CARGO_TARGET_DIR:-$PWD/target}/fuzz-clippy
        (cd fuzz && cargo fmt --check && cargo clippy --locked --all-targets --target-dir "$clippy_dir" -- -D warnings)
    fi
    if [[ " $* " == *" --seconds "* && " $* " != *" --runs "* ]]; then
        runs=
    fi
    targets=()
    while [[ $# -gt 0 ]]; do
        case $1 in
        --runs) runs=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        *) targets+=("$1"); shift ;;
        esac
    done
    fuzz_main "${targets[@]}"
    ;;
soak)
    shift
    build_release
    cargo run --release --locked --quiet -p xtask -- soak "$@"
    ;;
*)
    build_release "$@"
    bin=target/release/coinfeed
    if [[ " $* " == *" --help "* || " $* " == *" -h "* || " $* " == *" --version "* || "${1:-}" == "sim" ]]; then
        exec "$bin" "$@"
    fi
    if [[ -n "${COINAPI_KEY:-}" && " $* " != *" --sim "* ]]; then
        if [[ " $* " != *" --symbols"* ]]; then
            set -- --symbols "$DEFAULT_SYMBOLS" "$@"
        fi
        echo "run.sh: streaming from CoinAPI (COINAPI_KEY is set); Ctrl-C to stop" >&2
        exec "$bin" "$@"
    fi
    if [[ " $* " != *" --sim "* ]]; then
        set -- --sim "$@"
    fi
    echo "run.sh: COINAPI_KEY is not set: streaming from the built-in simulator; Ctrl-C to stop" >&2
    exec "$bin" "$@"
    ;;
esac
