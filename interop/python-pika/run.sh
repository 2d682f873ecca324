#!/usr/bin/env bash
# Runs the pika interop checks against a running broker.
# Usage: interop/python-pika/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
# Installs pika (pinned) into a venv under the user's cache dir; the last line printed is
# "N passed, N failed", and the exit status is non-zero when any check failed.
set -euo pipefail

url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../lib/pika.sh"

pika_setup || exit 1
echo "python $("$pika_python" -c 'import platform; print(platform.python_version())'), pika $PIKA_VERSION"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks test_pika.py "$pika_python" -u "$here/test_pika.py" "$url"
