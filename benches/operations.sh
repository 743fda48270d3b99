#!/usr/bin/env bash
# The figures of README's "Running for weeks": what a scraper, a recorder, a replay and
# compressed files cost, measured side by side in one sitting (rounds interleaved, so a noisy
# machine hits every variant alike). Runs the release binary against its own simulator
# (`coinfeed sim --rate 0`, a flood) on 127.0.0.1; every run is bounded by --limit.
#
#   benches/operations.sh [--messages N] [--rounds R]
#
# Prints one line per run (variant, wall seconds, msg/s, CPU seconds user+sys, peak RSS) and a
# median per variant.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=1000000
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
    --messages) N="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "usage: $0 [--messages N] [--rounds R]" >&2; exit 2 ;;
    esac
done

cargo build --release --locked --quiet --bin coinfeed
bin=$PWD/target/release/coinfeed
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# One simulator for every run: each coinfeed connects anew and is flooded.
"$bin" sim --rate 0 > "$work/sim.json" 2> "$work/sim.log" &
for _ in $(seq 100); do [[ -s "$work/sim.json" ]] && break; sleep 0.1; done
ws=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ws_url"])' "$work/sim.json")
rest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rest_url"])' "$work/sim.json")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The scraper: GETs http://127.0.0.1:PORT/metrics every EVERY seconds until SIGTERM, then prints
# the median client-side time per scrape (connect, request, the whole page).
scraper_py='
import signal, socket, statistics, sys, time
port, every = int(sys.argv[1]), float(sys.argv[2])
times = []
def report(*_):
    if times:
        times.sort()
        print(f"scrapes={len(times)} median_us={statistics.median(times):.0f} p99_us={times[int(len(times) * 0.99)]:.0f}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, report)
while True:
    t = time.perf_counter()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        while s.recv(65536):
            pass
        s.close()
        times.append((time.perf_counter() - t) * 1e6)
    except OSError:
        pass
    time.sleep(every)
'

# run VARIANT ARGS...: one coinfeed run of N messages; prints its figures.
run() {
    local variant=$1; shift
    local t0 t1 cpu
    t0=$(date +%s.%N)
    cpu=$( { TIMEFORMAT='%U %S'; time "$@" > /dev/null 2> "$work/err"; } 2>&1 )
    t1=$(date +%s.%N)
    local peak
    peak=$(grep -o 'peak_rss_kib=[0-9]*' "$work/err" | tail -1 | cut -d= -f2)
    python3 - "$variant" "$t0" "$t1" "$cpu" "${peak:-0}" "$N" <<'PY' | tee -a "$work/results"
import sys
variant, t0, t1, cpu, peak, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(), int(sys.argv[5]), int(sys.argv[6])
wall = t1 - t0
print(f"{variant:<14} wall_s={wall:6.2f} msg_s={n / wall:9.0f} cpu_s={float(cpu[0]) + float(cpu[1]):6.2f} peak_rss_mib={peak / 1024:6.1f}")
PY
}

common=(--ws-url "$ws" --rest-url "$rest" --symbols BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD,BINANCE_SPOT_SOL_USDT,KRAKEN_SPOT_XRP_EUR,BINANCEFTS_PERP_BTC_USDT --types trade,quote --health-interval 0 --limit "$N")
export COINAPI_KEY=bench-key

# The recording every replay round reads: N frames of the same flood.
mkdir -p "$work/rec"
"$bin" "${common[@]}" --record "$work/rec/feed.cfrec" > /dev/null 2> "$work/rec.err"
recording=$(ls "$work"/rec/feed-*.cfrec | head -1)
echo "recording: $recording ($(stat -c %s "$recording") bytes, $(grep -o 'record_frames=[0-9]*' "$work/rec.err" | tail -1))"

for round in $(seq "$ROUNDS"); do
    echo "-- round $round"
    run live "$bin" "${common[@]}"
    port=$(free_port)
    python3 -c "$scraper_py" "$port" 0.1 > "$work/scrape" & sp=$!
    run live+scrape "$bin" "${common[@]}" --metrics-listen "127.0.0.1:$port"
    kill -TERM $sp; wait $sp 2>/dev/null || true; echo "               $(cat "$work/scrape")"
    mkdir -p "$work/r$round"
    run live+record "$bin" "${common[@]}" --record "$work/r$round/feed.cfrec"
    rm -rf "$work/r$round"
    run replay-max "$bin" replay "$recording" --max --health-interval 0
    for c in plain zstd gzip; do
        rm -rf "$work/out"; mkdir -p "$work/out"
        if [[ $c == plain ]]; then
            run files-$c "$bin" "${common[@]}" --output-dir "$work/out"
        else
            run files-$c "$bin" "${common[@]}" --output-dir "$work/out" --compress $c
        fi
        echo "               files: $(du -sb "$work/out" | cut -f1) bytes"
    done
done

# What one scrape costs the process: its CPU time (utime + stime of every thread, from
# /proc/PID/stat) over 2,000 back-to-back scrapes of an otherwise idle feed (100 msg/s), less the
# same idle feed's CPU over the same time without scrapes.
echo "-- scrape cost"
"$bin" sim --rate 100 > "$work/quiet.json" 2> /dev/null &
for _ in $(seq 100); do [[ -s "$work/quiet.json" ]] && break; sleep 0.1; done
quiet_ws=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ws_url"])' "$work/quiet.json")
port=$(free_port)
"$bin" --ws-url "$quiet_ws" --rest-url "$rest" --symbols BITSTAMP_SPOT_BTC_USD --types trade --health-interval 0 \
    --metrics-listen "127.0.0.1:$port" > /dev/null 2>&1 & feed=$!
python3 - "$port" "$feed" <<'PY'
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
def cpu_s():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def scrape():
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        n += len(b)
    s.close()
    return n
for _ in range(100):
    try:
        scrape()
        break
    except OSError:
        time.sleep(0.05)
n = 2000
c0, t0 = cpu_s(), time.perf_counter()
size = sum(scrape() for _ in range(n))
c1, t1 = cpu_s(), time.perf_counter()
time.sleep(t1 - t0)
c2 = cpu_s()
busy, idle = c1 - c0, c2 - c1
print(f"scrapes={n} page_bytes={size // n} wall_us_per_scrape={(t1 - t0) / n * 1e6:.0f} cpu_us_per_scrape={(busy - idle) / n * 1e6:.0f} (busy {busy:.2f}s, idle {idle:.2f}s)")
PY
kill -INT $feed; wait $feed 2>/dev/null || true

echo "-- medians"
touch "$work/results"
python3 - "$work/results" <<'PY'
import collections, re, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name = line.split()[0]
    rows[name].append({k: float(v) for k, v in re.findall(r"(\w+)=\s*([\d.]+)", line)})
for name, rs in rows.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"{name:<14} msg_s={med('msg_s'):9.0f} cpu_s={med('cpu_s'):6.2f} peak_rss_mib={med('peak_rss_mib'):6.1f}  ({len(rs)} runs)")
PY
