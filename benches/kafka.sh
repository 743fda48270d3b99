#!/usr/bin/env bash
# The figures of README's "Scaling out": throughput into Kafka against stdout in the same sitting
# (rounds interleaved), and the latency from a line's recv_time to the broker's acknowledgement
# at a paced rate. Runs the release binary (built with the `kafka` feature) against its own
# simulator on 127.0.0.1 and a tansu broker (tests/kafka/install.sh) on a free loopback port,
# in-memory storage; every run is bounded by --limit.
#
#   benches/kafka.sh [--messages N] [--rounds R] [--paced-rate R]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=1000000
ROUNDS=3
PACED=5000
while [[ $# -gt 0 ]]; do
    case "$1" in
    --messages) N="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --paced-rate) PACED="$2"; shift 2 ;;
    *) echo "usage: $0 [--messages N] [--rounds R] [--paced-rate R]" >&2; exit 2 ;;
    esac
done

tansu=$(tests/kafka/install.sh)
cargo build --release --locked --quiet --bin coinfeed --features kafka
bin=$PWD/target/release/coinfeed
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

port=$(free_port)
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

start_sim() { # RATE FILE
    "$bin" sim --rate "$1" > "$2" 2> /dev/null &
    for _ in $(seq 100); do [[ -s "$2" ]] && break; sleep 0.1; done
}
url() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
start_sim 0 "$work/flood.json"
start_sim "$PACED" "$work/paced.json"
symbols=BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD,BINANCE_SPOT_SOL_USDT,KRAKEN_SPOT_XRP_EUR,BINANCEFTS_PERP_BTC_USDT
export COINAPI_KEY=bench-key

topics=0
topic() { # a fresh topic of 6 partitions per run, so each run writes into an empty one
    topics=$((topics + 1))
    "$tansu" topic create "bench$topics" --partitions 6 --broker "tcp://127.0.0.1:$port" > /dev/null
    echo "bench$topics"
}

run() { # VARIANT JSON ARGS...
    local variant=$1 json=$2; shift 2
    local t0 t1 cpu
    t0=$(date +%s.%N)
    cpu=$( { TIMEFORMAT='%U %S'; time "$bin" --ws-url "$(url "$json" ws_url)" --rest-url "$(url "$json" rest_url)" \
        --symbols "$symbols" --types trade,quote --health-interval 0 "$@" > /dev/null 2> "$work/err"; } 2>&1 )
    t1=$(date +%s.%N)
    python3 - "$variant" "$t0" "$t1" "$cpu" "$work/err" <<'PY' | tee -a "$work/results"
import re, sys
variant, t0, t1, cpu, err = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(), sys.argv[5]
summary = [l for l in open(err) if "summary:" in l][-1]
kv = dict(re.findall(r"(\w+)=(\d+)", summary))
wall = t1 - t0
n, b = int(kv["written"]), int(kv["bytes_written"])
extra = ""
if "delivered" in kv:
    extra = f" delivered={kv['delivered']} failed={kv['delivery_failed']} ack_p50_ms={int(kv.get('kafka_ack_p50_us', 0)) / 1000:.1f} ack_p99_ms={int(kv.get('kafka_ack_p99_us', 0)) / 1000:.1f}"
print(f"{variant:<10} wall_s={wall:6.2f} msg_s={n / wall:8.0f} mb_s={b / wall / 1e6:6.1f} cpu_s={float(cpu[0]) + float(cpu[1]):6.2f} peak_rss_mib={int(kv['peak_rss_kib']) / 1024:6.1f}{extra}")
PY
}

for round in $(seq "$ROUNDS"); do
    echo "-- round $round: $N messages, flood"
    run stdout "$work/flood.json" --limit "$N"
    run kafka "$work/flood.json" --limit "$N" --kafka-brokers "127.0.0.1:$port" --kafka-topic "$(topic)"
done
echo "-- paced: $PACED msg/s for 20 s, receive-to-ack latency"
run paced "$work/paced.json" --limit $((PACED * 20)) --kafka-brokers "127.0.0.1:$port" --kafka-topic "$(topic)"

echo "-- medians"
python3 - "$work/results" <<'PY'
import collections, re, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    rows[line.split()[0]].append({k: float(v) for k, v in re.findall(r"(\w+)=\s*([\d.]+)", line)})
for name, rs in rows.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"{name:<10} msg_s={med('msg_s'):8.0f} mb_s={med('mb_s'):6.1f} cpu_s={med('cpu_s'):6.2f} peak_rss_mib={med('peak_rss_mib'):6.1f}  ({len(rs)} runs)")
PY
