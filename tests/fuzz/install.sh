#!/usr/bin/env bash
# Installs cargo-fuzz (the libFuzzer driver for `./run.sh fuzz` and `./run.sh fuzz-smoke`) from
# crates.io into target/fuzz-tools when it is missing, and prints the binary's path on stdout.
# Cached: a second run only prints the path. The stable toolchain is enough: run.sh builds the
# fuzz targets with RUSTC_BOOTSTRAP=1, which lets stable rustc take `-Zsanitizer=address`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=${CARGO_TARGET_DIR:-target}/fuzz-tools
bin=$root/bin/cargo-fuzz
# The version is pinned so a fresh clone builds the same driver the committed numbers came from.
version=0.13.2
if [[ ! -x "$bin" ]] || ! "$bin" --version 2>/dev/null | grep -q "$version"; then
    echo "installing cargo-fuzz $version into $root (about two minutes the first time)" >&2
    cargo install cargo-fuzz --version "$version" --locked --root "$root" --quiet >&2
fi
realpath "$bin"
