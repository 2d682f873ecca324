#!/usr/bin/env bash
# Runs the php-amqplib interop checks against a running broker.
# Usage: interop/php-amqplib/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
#
# php-amqplib and PHP come from Debian (php-amqplib, php-cli). test_amqplib.php holds the checks:
# RabbitMQ's tutorials 1-6 and publisher confirms. The last line printed is "N passed, N failed",
# and the exit status is non-zero when any check failed.
set -euo pipefail

# Debian 12 (bookworm) ships php-amqplib 3.5.3-1 with PHP 8.2.
DEBS=(php-cli php-amqplib)
AUTOLOAD=/usr/share/php/PhpAmqpLib/autoload.php

url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# deb_version and ensure_debs, shared by the suites that install from Debian.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

if ! ensure_debs "${DEBS[@]}" || ! php -r "require '$AUTOLOAD';" 2>/dev/null; then
    echo "FAIL setup: could not install ${DEBS[*]}"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "php $(php -r 'echo PHP_VERSION;'), php-amqplib" \
    "$(php -r "require '$AUTOLOAD'; echo PhpAmqpLib\\Package::VERSION;") (php-amqplib $(deb_version php-amqplib))"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks test_amqplib.php php "$here/test_amqplib.php" "$url"
