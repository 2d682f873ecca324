#!/usr/bin/env bash
# Scrapes a broker's Prometheus endpoint with Python's prometheus_client parser, after pika did
# known work on the AMQP side, and checks names, types, labels and values.
# Usage: WARREN_PROMETHEUS_URL=http://127.0.0.1:15692 interop/prometheus/run.sh AMQP_URL
#
# The endpoint is WARREN_PROMETHEUS_URL (run-all.sh sets it; default http://127.0.0.1:15692).
# The same checks pass against RabbitMQ 3.10's rabbitmq_prometheus for the names the two share:
#   WARREN_PROMETHEUS_URL=http://127.0.0.1:15792 interop/prometheus/run.sh amqp://guest:guest@127.0.0.1:5682/%2f
# pika and prometheus_client (pinned) go into a venv under the user's cache dir, once. The last
# line printed is "N passed, N failed", and the exit status is non-zero when any check failed.
set -euo pipefail

PROMETHEUS_CLIENT_VERSION=0.26.0
url=${1:?usage: run.sh AMQP_URL}
metrics=${WARREN_PROMETHEUS_URL:-http://127.0.0.1:15692}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../lib/pika.sh"
source "$here/../lib/checks.sh"

pika_setup || exit 1
pika_add prometheus_client prometheus_client "$PROMETHEUS_CLIENT_VERSION" || exit 1
echo "pika $PIKA_VERSION, prometheus_client $PROMETHEUS_CLIENT_VERSION, metrics at $metrics"
run_checks test_prometheus.py "$pika_python" -u "$here/test_prometheus.py" "$url" "$metrics"
