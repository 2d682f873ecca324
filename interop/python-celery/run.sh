#!/usr/bin/env bash
# Runs the Celery interop checks against a running broker.
# Usage: interop/python-celery/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
# Installs celery, kombu and amqp (pinned) into a venv under the user's cache dir; the checks start
# a real Celery worker (celery -A tasks worker --pool=solo) as a subprocess and stop it at the end.
# The last line printed is "N passed, N failed", and the exit status is non-zero when any check
# failed.
set -euo pipefail

CELERY_VERSION=5.7.0
KOMBU_VERSION=5.7.0
AMQP_VERSION=5.4.2
url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop
venv=$cache/celery-venv
python=${PYTHON:-python3}

have_celery() {
    "$1" -c "
import sys, amqp, celery, kombu
sys.exit((celery.__version__, kombu.__version__, amqp.__version__)
         != ('$CELERY_VERSION', '$KOMBU_VERSION', '$AMQP_VERSION'))" 2>/dev/null
}

setup() {
    mkdir -p "$cache"
    if have_celery "$venv/bin/python"; then
        return 0
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || return 1
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        "celery==$CELERY_VERSION" "kombu==$KOMBU_VERSION" "amqp==$AMQP_VERSION" >&2 || return 1
    have_celery "$venv/bin/python"
}

if ! setup; then
    echo "FAIL setup: could not install celery==$CELERY_VERSION kombu==$KOMBU_VERSION amqp==$AMQP_VERSION into $venv"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), celery $CELERY_VERSION, kombu $KOMBU_VERSION, amqp $AMQP_VERSION"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks test_celery.py env PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -u "$here/test_celery.py" "$url"
