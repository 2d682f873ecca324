#!/usr/bin/env bash
# Runs the RabbitMQ Java client interop checks against a running broker.
# Usage: interop/java-amqp-client/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
#
# The client comes from Debian (librabbitmq-client-java, with slf4j from libslf4j-java): there is
# no Maven repository to fetch from. InteropChecks.java is compiled with the machine's javac (JDK
# 17) into a temp dir and run. The automatic-recovery check restarts the broker with
# $WARREN_RESTART_CMD (exported by interop/run-all.sh) and is skipped when that is unset.
# The last line printed is "N passed, N failed", and the exit status is non-zero when any check
# failed.
set -euo pipefail

# Debian 12 (bookworm) ships amqp-client 5.0.0-1.1 and slf4j 1.7.32-1.
DEBS=(librabbitmq-client-java libslf4j-java)
JARS=/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar

url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/java-amqp-client.XXXXXX")
trap 'rm -rf "$work"' EXIT

# deb_version and ensure_debs, shared by the suites that install from Debian.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

setup() {
    command -v javac >/dev/null || DEBS+=(openjdk-17-jdk-headless)
    ensure_debs "${DEBS[@]}" || return 1
    javac -nowarn -d "$work" -cp "$JARS" "$here/InteropChecks.java" >&2
}

if ! setup; then
    echo "FAIL setup: could not install ${DEBS[*]} or compile InteropChecks.java"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "$(javac -version 2>&1), amqp-client $(deb_version librabbitmq-client-java)," \
    "slf4j $(deb_version libslf4j-java)"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks InteropChecks java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.logFile=System.err \
    -cp "$work:$JARS" InteropChecks "$url"
