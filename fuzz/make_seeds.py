#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from a simulator run and from the
real shapes in the protocol notes (shared/coinapi-protocol.md: pretty-printed REST bodies, `type`
last, 29-digit numbers, `\\u0027` escapes, the 403 quota object).

    fuzz/make_seeds.py RECORDING.cfrec OUTPUT.ndjson REST_DIR

RECORDING is a `--record` file of a run against `coinfeed sim` (its raw frames), OUTPUT that run's
NDJSON, REST_DIR the simulator's answers to each REST endpoint (files `history`, `latest`,
`quote`, `ohlcv`, `book`, `err`). How they were made is in README.md (Development, Fuzzing). The
seeds are committed; this script is how they can be made again.
"""

import hashlib
import json
import os
import re
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def records(path):
    """(raw record bytes, kind, text) of each record after the 16-byte header."""
    b = open(path, "rb").read()
    at, out = 16, []
    while at + 8 <= len(b):
        (n,) = struct.unpack_from("<I", b, at)
        body = b[at + 8 : at + 8 + n]
        out.append((b[at : at + 8 + n], body[0], body[17:]))
        at += 8 + n
    return b[:16], out


# The protocol notes' real shapes, by hand.
FRAMES = [
    '{"time_exchange":"2023-08-14T09:31:02.1234567Z","time_coinapi":"2023-08-14T09:31:02.2234567Z",'
    '"uuid":"6f1c1c50-3a0e-4b6e-9f58-4d7b1f0f0c1a","price":67009.375950596670472379501527,'
    '"size":0.0189885151556305438646080756,"taker_side":"BUY","symbol_id":"COINBASE_SPOT_BTC_USD",'
    '"sequence":4178319,"type":"trade"}',
    '{"time":"2023-08-14T09:31:02.0000000Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":29367.015,"type":"exrate"}',
    '{"type":"error","message":"Invalid API key or it\\u0027s not active"}',
    '{"type":"error","message":"Reached maximum allowed buffered messages for this connection."}',
    '{"type":"reconnect","within_seconds":10,"before_time":"2023-08-14T09:31:12.0000000Z"}',
    '{"type":"hearbeat"}',
    '{"type":"heartbeat"}',
    '{"type":"trade","symbol_id":"CRYPTOPIA_SPOT_$$$_XMR","sequence":1,"uuid":"A","price":0,"size":0,"taker_side":"SELL_ESTIMATED"}',
    '{"type":"quote","symbol_id":"KRAKEN_SPOT_ETH2.S_ETH","sequence":18446744073709551615,"ask_price":1e-8,"ask_size":12.0E+3,"bid_price":-0.0,"bid_size":5872}',
    '{"type":"book","symbol_id":"KRAKEN_SPOT_EUR_CAD_57CC94","sequence":1,"time_exchange":"2023-08-14T09:31:02.1234567Z",'
    '"time_coinapi":"2023-08-14T09:31:02.2234567Z","is_snapshot":true,"asks":[{"price":67069.80000,"size":0.20000000}],'
    '"bids":[{"price":67069.8,"size":5872}]}',
    '{"type":"book_l3","symbol_id":"DERIBIT_IDX_BTC_USD","sequence":2,"asks":[{"id":"x","price":1.5,"size":2,"update_type":"ADD"}],"bids":[]}',
    '{\n  "type": "ohlcv",\n  "symbol_id": "BYBIT_PERP_SHIB1000_USDT",\n  "sequence": 3,\n  "period_id": "1MIN",\n  "price_open": 0.0110000000000000000000000001\n}',
]

BOOKS = [
    '{"type":"book","symbol_id":"A","sequence":1,"is_snapshot":true,"bids":[{"price":100.50,"size":1},{"price":100.5,"size":2},{"price":99,"size":3}],"asks":[{"price":101,"size":1e-8}]}\n'
    '{"type":"book","symbol_id":"A","sequence":2,"is_snapshot":false,"bids":[{"price":1.005E+2,"size":0},{"price":100.75,"size":4}],"asks":[{"price":100.75,"size":1}]}\n'
    '{"type":"book","symbol_id":"A","sequence":3,"is_snapshot":false,"bids":[{"price":-1,"size":1}],"asks":[{"price":67009.375950596670472379501527,"size":0.0189885151556305438646080756}]}',
    '{"type":"book","symbol_id":"A","sequence":1,"is_snapshot":true,"bids":[[1,2]],"asks":null,"time_exchange":"2023-08-14T09:31:02.1234567Z","time_coinapi":7}',
]

NUMBERS = [
    "67069.80000\n67069.8\n5872",
    "67009.375950596670472379501527\n67009.37595059667047237950153\n0.0189885151556305438646080756",
    "1e-8\n0.00000001\n-0.0",
    "1.2345678901234567890123456789012345678\n1.23456789012345678901234567890123456789\n1e999999",
    "-1000\n-999.99\n1e1000001",
    "12.0E+3\n1.50E+2\n0000",
]

REST = [
    (5, '{"error": "Invalid API key or it\\u0027s not active"}'),
    (5, '{"message":"nope"}'),
    (5, ""),
    (5, '{\n  "title": "Forbidden",\n  "status": 403,\n  "detail": "Quota exceeded",\n  "error": "You have exceeded your API key rate limits",\n'
        '  "QuotaKey": "k",\n  "QuotaName": "daily",\n  "QuotaType": "credits",\n  "QuotaValueCurrentUsage": 10001,\n  "QuotaValue": 10000\n}'),
    (0, '[\n  {\n    "symbol_id": "KRAKEN_SPOT_BTC_USD",\n    "time_exchange": "2023-08-14T09:31:02.1234567Z",\n    "time_coinapi": "2023-08-14T09:31:02.0734567Z",\n'
        '    "uuid": "6f1c1c50-3a0e-4b6e-9f58-4d7b1f0f0c1a",\n    "price": 67009.375950596670472379501527,\n    "size": 0,\n    "taker_side": "SELL_ESTIMATED"\n  }\n]'),
    (0, "[]"),
    (2, '{"symbol_id":"A","ask_price":770.000000000,"last_trade":{"time_exchange":"2023-08-14T09:31:02.1234567Z","price":1}}'),
    (4, '{"symbol_id":"A","asks":[{"price":67069.80000,"size":0.20000000}],"bids":[]}'),
    (3, '[{"time_period_start":"2023-08-14T09:31:00.0000000Z","price_open":5872,"trades_count":1}]'),
]

CONFIGS = [
    ["--symbols", "BITSTAMP_SPOT_BTC_USD,COINBASE_SPOT_ETH_USD"],
    ["--symbols", "BITSTAMP_SPOT_*", "--types", "trade,quote,book,book5,book20,book50,book_l3,ohlcv,exrate"],
    ["--sim", "--sim-rate", "5000", "--workers", "3", "--buffer-mib", "16", "--queue-capacity", "1000"],
    ["--symbols", "A", "--book-output", "top", "--book-depth", "10", "--book-interval-ms", "250", "--book-max-levels", "1000", "--book-max-books", "50", "--types", "book"],
    ["--symbols", "A", "--output-dir", "out", "--rotate", "1h,64MiB", "--compress", "zstd", "--resume"],
    ["--symbols", "A", "--shard", "1/4", "--kafka-brokers", "127.0.0.1:9092", "--kafka-topic", "t", "--kafka-opt", "linger.ms=5"],
    ["--symbols", "A", "--ws-url", "ws://127.0.0.1:9/v1/", "--rest-url", "http://127.0.0.1:8", "--allow-insecure-ws"],
    ["--symbols", "A", "--ws-url", "wss://user:pass@ws.coinapi.io/v1/", "--rest-url", "https://rest.coinapi.io"],
    ["--symbols", "A", "--recovery-rps", "0.5", "--recovery-max-pending", "100", "--recovery-max-attempts", "3", "--recovery-timeout", "2.5",
     "--recovery-trades-limit", "100000", "--recovery-budget", "10000"],
    ["--symbols", "A", "--connect-timeout", "1e-300", "--stale-timeout", "NaN", "--backoff-max", "inf", "--queue-wait-ms", "0"],
    ["--symbols", "A", "--metrics-listen", "0.0.0.0:9100", "--allow-remote-metrics", "--health-interval", "0", "--shutdown-timeout", "86400", "--log-level", "debug"],
    ["--symbols", "A", "--limit", "18446744073709551615", "--record", "rec/r"],
    ["--symbols", ",,A$,", "--types", "trade,,trade"],
]
REPLAYS = [
    ["f.cfrec", "--max"],
    ["a.cfrec", "b.cfrec", "--speed", "2", "--workers", "2", "--book-output", "both", "--rotate", "10m"],
    ["f.cfrec", "--speed", "1e-300"],
]

RESUME = [
    '{"type":"trade","symbol_id":"A","sequence":1,"time_exchange":"2023-08-14T09:31:02.1234567Z","uuid":"u1","price":1,"recv_time":"x","source":"ws"}\n'
    '{"type":"trade","symbol_id":"A","sequence":2,"time_exchange":"2023-08-14T09:31:05.1234567Z","uuid":"u2","price":1}\n'
    '{"type":"trade","symbol_id":"A\\u0042","time_exchange":"2023-08-14T09:31:05.1234567Z","uuid":"u\\u0027"}\n'
    '{"type":"recovery","symbol_id":"A"}\n'
    '{"type":"trade","symbol_id":"B","time_exchange":"not a time","uuid":"u3"}\n'
    '{"type":"trade","symbol_id":"C","time_exch',
]


def main():
    rec, out, rest = sys.argv[1:4]
    header, recs = records(rec)
    frames = [t.decode() for _, kind, t in recs if kind == 1]
    # Frames: a few of every type the simulator sends (distinct texts, spread over the run).
    by_type = {}
    for f in frames:
        t = json.loads(f).get("type")
        by_type.setdefault(t, []).append(f)
    for t, fs in by_type.items():
        step = max(1, len(fs) // 60)
        for f in fs[::step][:60]:
            write("frame", f)
    for f in FRAMES:
        write("frame", f)
    # Books: one symbol's snapshot and the deltas after it, up to 8 messages a seed.
    books = {}
    for f in by_type.get("book", []):
        books.setdefault(json.loads(f)["symbol_id"], []).append(f)
    for fs in books.values():
        for i in range(0, min(len(fs), 200), 8):
            write("book", "\n".join(fs[i : i + 8]))
    for b in BOOKS:
        write("book", b)
    # Numbers: the price and size texts the simulator writes, three a seed.
    numbers = sorted(set(re.findall(r'"(?:price|size|ask_price|bid_size|rate)":(-?[0-9][0-9.eE+-]*)', "\n".join(frames))))
    for i in range(0, min(len(numbers), 300), 3):
        write("decimal", "\n".join(numbers[i : i + 3]))
    for n in NUMBERS:
        write("decimal", n)
    # REST bodies, each behind its endpoint byte.
    for endpoint, name in [(0, "history"), (1, "latest"), (2, "quote"), (3, "ohlcv"), (4, "book"), (5, "err")]:
        write("rest_body", bytes([endpoint]) + open(os.path.join(rest, name), "rb").read())
    for endpoint, body in REST:
        write("rest_body", bytes([endpoint]) + body.encode())
    # Recordings: the header and the first few records, and a cut one.
    for n in [1, 2, 4, 8]:
        write("record", header + b"".join(r for r, _, _ in recs[:n]))
    write("record", header + recs[0][0][:-3])
    # Command lines (first byte: even = a run, odd = a replay; with the key or without).
    for i, args in enumerate(CONFIGS):
        write("config", bytes([(i % 2) * 2 + 8]) + b"\0".join(a.encode() for a in args))
    for args in REPLAYS:
        write("config", bytes([9]) + b"\0".join(a.encode() for a in args))
    # Resume: runs of our own output lines.
    lines = open(out, "rb").read().split(b"\n")
    for i in range(0, min(len(lines), 400), 20):
        write("resume", b"\n".join(lines[i : i + 20]))
    for r in RESUME:
        write("resume", r)


if __name__ == "__main__":
    main()
