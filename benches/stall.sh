#!/usr/bin/env bash
# The consumer stall of issue 9, as a command: the release binary against its built-in simulator
# (5 symbols, trade + quote) at --rate msg/s, piped into a reader that stops reading for
# --pause-ms every --every-s seconds, for --seconds; then Ctrl-C. Prints the lines the consumer
# read and the summary's counts (received, written, dropped, recovered, peak RSS).
#
#   benches/stall.sh [--rate 10000] [--seconds 21] [--pause-ms 300] [--every-s 3] [COINFEED ARGS...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rate=10000 seconds=21 pause_ms=300 every_s=3
while [[ $# -gt 0 ]]; do
    case "$1" in
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --pause-ms) pause_ms=$2; shift 2 ;;
    --every-s) every_s=$2; shift 2 ;;
    *) break ;;
    esac
done

cargo build --release --locked --quiet --bin coinfeed
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# The consumer: reads lines, and every `every_s` seconds stops reading for `pause_ms`.
consumer='
import sys, time
pause, every = float(sys.argv[1]) / 1000, float(sys.argv[2])
lines, next_pause = 0, time.monotonic() + every
for _ in sys.stdin.buffer:
    lines += 1
    if time.monotonic() >= next_pause:
        time.sleep(pause)
        next_pause = time.monotonic() + every
print(lines)
'
mkfifo "$dir/pipe"
python3 -c "$consumer" "$pause_ms" "$every_s" <"$dir/pipe" >"$dir/lines" &
target/release/coinfeed --sim --sim-rate "$rate" "$@" >"$dir/pipe" 2>"$dir/stderr" &
pid=$!
sleep "$seconds"
kill -INT "$pid"
wait

summary=$(grep -o 'summary: .*' "$dir/stderr" || true)
if [[ -z "$summary" ]]; then
    echo "stall.sh: no summary line; coinfeed's stderr:" >&2
    cat "$dir/stderr" >&2
    exit 1
fi
field() { grep -o " $1=[0-9.]*" <<<" ${summary#summary: }" | cut -d= -f2; }
echo "rate=$rate msg/s, ${seconds} s, consumer pauses ${pause_ms} ms every ${every_s} s"
echo "consumer_lines=$(cat "$dir/lines") received=$(field received) written=$(field written)" \
    "dropped=$(field dropped) gaps=$(field gaps) recovered_written=$(field recovered_written)" \
    "connections=$(field connections) peak_rss_mib=$(awk "BEGIN{printf \"%.1f\", $(field peak_rss_kib)/1024}")" \
    "rss_at_exit_mib=$(awk "BEGIN{printf \"%.1f\", $(field rss_kib)/1024}")"
