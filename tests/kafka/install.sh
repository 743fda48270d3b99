#!/usr/bin/env bash
# Installs the Kafka-protocol broker the Kafka sink's tests run against: tansu (crates.io,
# Apache-2.0), a real broker with in-memory storage, built from source with cargo (Apache Kafka
# itself comes from Maven Central, which these machines cannot reach). Once: a later run finds
# target/kafka-tools/bin/tansu at the pinned version and only checks it. Prints the binary's
# absolute path on stdout:
#
#   tansu=$(tests/kafka/install.sh)
#   "$tansu" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
#       --storage-engine memory://tansu/
#
# The first build takes some 45 CPU-minutes (about 25 minutes on 2 idle cores); later runs find it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

TANSU_VERSION=0.6.0
root=target/kafka-tools
bin=$root/bin/tansu

installed() {
    [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"
}

if ! installed; then
    echo "install.sh: building tansu $TANSU_VERSION into $root (about 25 minutes on 2 cores the first time: some 45 CPU-minutes)" >&2
    mkdir -p "$root"
    cargo install --quiet --locked tansu --version "$TANSU_VERSION" --features dynostore --root "$root" >&2
    installed || { echo "install.sh: $bin does not report version $TANSU_VERSION" >&2; exit 1; }
fi
echo "$PWD/$bin"
