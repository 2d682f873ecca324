#!/usr/bin/env bash
# Runs the Bunny (Ruby) interop checks against a running broker.
# Usage: interop/ruby-bunny/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
#
# Bunny and Ruby come from Debian (ruby-bunny). test_bunny.rb holds the checks: RabbitMQ's
# tutorials 1-6 and publisher confirms. The last line printed is "N passed, N failed", and the
# exit status is non-zero when any check failed.
set -euo pipefail

# Debian 12 (bookworm) ships bunny 2.19.0-2 with Ruby 3.1.
DEBS=(ruby-bunny)

url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# deb_version and ensure_debs, shared by the suites that install from Debian.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

if ! ensure_debs "${DEBS[@]}" || ! ruby -e 'require "bunny"' 2>/dev/null; then
    echo "FAIL setup: could not install ${DEBS[*]}"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "ruby $(ruby -e 'print RUBY_VERSION'), bunny $(ruby -e 'require "bunny"; print Bunny::VERSION')" \
    "(ruby-bunny $(deb_version ruby-bunny))"

# The checks print the final line themselves; if they die before that, run_checks says so.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/checks.sh"
run_checks test_bunny.rb ruby "$here/test_bunny.rb" "$url"
