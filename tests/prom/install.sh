#!/usr/bin/env bash
# Installs the Prometheus project's Python client (its text-format parser is what
# tests/prom/check.py holds the /metrics page to) into a venv under target/, once: a later run
# finds it and only checks that the pinned version imports. Prints the venv's python (an
# absolute path) on stdout, so a caller can
#
#   py=$(tests/prom/install.sh)
#   COINFEED_PROM_SAMPLE=target/prom-sample.txt cargo test --lib a_full_page_parses_back
#   "$py" tests/prom/check.py target/prom-sample.txt
#
# Needs python3 with venv and PyPI (pip); the version is pinned so a new parser release cannot
# change the verdict unnoticed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PROMETHEUS_CLIENT_VERSION=0.26.0
venv=target/prom-venv
py=$venv/bin/python

# The pinned version, importable; anything else (no venv, another version) is installed anew.
installed() {
    "$py" -c "import importlib.metadata as m, prometheus_client, sys; sys.exit(m.version('prometheus_client') != '$PROMETHEUS_CLIENT_VERSION')" >/dev/null 2>&1
}

if ! installed; then
    echo "install.sh: installing prometheus_client==$PROMETHEUS_CLIENT_VERSION into $venv" >&2
    mkdir -p target
    python3 -m venv "$venv"
    "$py" -m pip install --quiet --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_VERSION" >&2
    installed || { echo "install.sh: prometheus_client $PROMETHEUS_CLIENT_VERSION does not import from $venv" >&2; exit 1; }
fi
echo "$PWD/$py"
