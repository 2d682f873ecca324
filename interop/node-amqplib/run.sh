#!/usr/bin/env bash
# Runs the amqplib interop checks against a running broker.
# Usage: interop/node-amqplib/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
# Installs amqplib (pinned) from npm under the user's cache dir, with co and uuid, which some of
# its examples require. test_amqplib.js runs the examples the package ships (the RabbitMQ
# tutorials in both APIs, headers, waitForConfirms, the generator examples, direct reply-to),
# driving the long-running ones, plus checks of its own. The last line printed is
# "N passed, N failed", and the exit status is non-zero when any check failed.
#
# Examples not run, because they fail against the reference RabbitMQ as well:
# - examples/ssl.js: TLS with client certificates from ../etc/, which the package does not ship
#   (and the reference broker has no TLS listener).
# - examples/stream_queues/: RabbitMQ stream queues (x-queue-type: stream), not part of AMQP 0-9-1;
#   its package.json asks for amqplib ^0.10.3, not this version.
set -euo pipefail

AMQPLIB_VERSION=2.3.1
CO_VERSION=4.6.0     # examples/send_generators.js, receive_generator.js
UUID_VERSION=11.1.0  # examples/tutorials/rpc_client.js (CommonJS build)
url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop
prefix=$cache/amqplib-$AMQPLIB_VERSION
node=${NODE:-node}

have_amqplib() {
    "$node" -e "
const v = (m) => require('$prefix/node_modules/' + m + '/package.json').version;
process.exit(v('amqplib') === '$AMQPLIB_VERSION' && v('co') === '$CO_VERSION' && v('uuid') === '$UUID_VERSION' ? 0 : 1);
" 2>/dev/null
}

setup() {
    mkdir -p "$cache"
    if have_amqplib; then
        return 0
    fi
    rm -rf "$prefix"
    mkdir -p "$prefix"
    echo '{"name": "warren-interop-amqplib", "private": true}' >"$prefix/package.json"
    (cd "$prefix" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
        --save-exact "amqplib@$AMQPLIB_VERSION" "co@$CO_VERSION" "uuid@$UUID_VERSION") >&2 || return 1
    have_amqplib
}

if ! setup; then
    echo "FAIL setup: could not install amqplib@$AMQPLIB_VERSION into $prefix"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "node $("$node" --version), amqplib $AMQPLIB_VERSION"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks test_amqplib.js env INTEROP_AMQPLIB_DIR="$prefix/node_modules/amqplib" NODE_PATH="$prefix/node_modules" \
    "$node" "$here/test_amqplib.js" "$url"
