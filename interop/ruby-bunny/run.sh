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

deb_version() {
    dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | sed -n 's/^install ok installed //p'
}

# Installs the missing Debian packages non-interactively; runs `apt-get update` only when the
# first attempt fails (the package lists may be missing or stale). apt's output goes to a log,
# shown only when the install fails.
ensure_debs() {
    local missing=() p
    for p in "$@"; do
        [[ -n $(deb_version "$p") ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
    if [[ $(id -u) != 0 ]]; then apt=(sudo -n "${apt[@]}"); fi
    local log
    log=$(mktemp)
    echo "installing ${missing[*]} (apt-get)"
    if DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >"$log" 2>&1 ||
        { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >>"$log" 2>&1; }; then
        rm -f "$log"
        return 0
    fi
    tail -n 20 "$log" >&2
    rm -f "$log"
    return 1
}

if ! ensure_debs "${DEBS[@]}" || ! ruby -e 'require "bunny"' 2>/dev/null; then
    echo "FAIL setup: could not install ${DEBS[*]}"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "ruby $(ruby -e 'print RUBY_VERSION'), bunny $(ruby -e 'require "bunny"; print Bunny::VERSION')" \
    "(ruby-bunny $(deb_version ruby-bunny))"

# The checks print the final line themselves; if Ruby dies before that, say so in the same format.
set +e
out=$(mktemp)
ruby "$here/test_bunny.rb" "$url" </dev/null | tee "$out"
status=${PIPESTATUS[0]}
set -e
if ! tail -n 1 "$out" | grep -Eq '^[0-9]+ passed, [0-9]+ failed$'; then
    passed=$(grep -c '^ok ' "$out" || true)
    failed=$(grep -c '^FAIL ' "$out" || true)
    echo "FAIL runner: test_bunny.rb exited with status $status before its summary"
    echo "$passed passed, $((failed + 1)) failed"
    status=1
fi
rm -f "$out"
exit "$status"
