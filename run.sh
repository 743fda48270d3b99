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
