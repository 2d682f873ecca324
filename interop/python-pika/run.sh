#!/usr/bin/env bash
# Runs the pika interop checks against a running broker.
# Usage: interop/python-pika/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
# Installs pika (pinned) into a venv under the user's cache dir; the last line printed is
# "N passed, N failed", and the exit status is non-zero when any check failed.
set -euo pipefail

PIKA_VERSION=1.3.2
url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop
venv=$cache/pika-venv
python=${PYTHON:-python3}

have_pika() {
    "$1" -c "import pika, sys; sys.exit(pika.__version__ != '$PIKA_VERSION')" 2>/dev/null
}

setup() {
    mkdir -p "$cache"
    if have_pika "$venv/bin/python"; then
        return 0
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || return 1
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        "pika==$PIKA_VERSION" >&2 || return 1
    have_pika "$venv/bin/python"
}

if ! setup; then
    echo "FAIL setup: could not install pika==$PIKA_VERSION into $venv"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), pika $PIKA_VERSION"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks test_pika.py "$venv/bin/python" -u "$here/test_pika.py" "$url"
