#!/usr/bin/env bash
# Runs rabbitmqadmin, v1 and v2, against a broker's management HTTP API.
# Usage: WARREN_MANAGEMENT_URL=http://127.0.0.1:15672 interop/rabbitmqadmin/run.sh AMQP_URL
#
# The API is WARREN_MANAGEMENT_URL (run-all.sh sets it; default http://127.0.0.1:15672), as
# guest/guest; AMQP_URL is the same broker's AMQP listener (one check opens a connection there
# for `list connections` and `close connection`). test_rabbitmqadmin.py holds the checks and
# says what they cover. Both tools are cached under the user's cache dir, so only the first run
# fetches or builds them:
#   v1, the python script of RabbitMQ 3.x, comes from Debian's rabbitmq-server package: the .deb
#      is downloaded and unpacked (installing it would pull in Erlang and start a server);
#   v2, the Rust rewrite, is built from crates.io with cargo (pinned, --locked). A cold build
#      (about 5 CPU-minutes) took 7m20s on 2 cores shared with another cargo build; it is cut off
#      after RABBITMQADMIN_V2_BUILD_TIMEOUT seconds (default 780, to stay within run-all.sh's
#      900 s per suite) and resumes from what it had built on the next run.
# A tool that cannot be had counts as one failed check, and the other tool's checks still run.
# The last line printed is "N passed, N failed", and the exit status is non-zero when any check
# failed.
set -euo pipefail

# Debian 12 (bookworm) ships rabbitmq-server 3.10.8-1.1+deb12u1: rabbitmqadmin 3.10.8, the same
# version as the RabbitMQ reference. Whatever version apt offers is used, and printed.
V1_DEB=rabbitmq-server
# 2.35.0 needs rustc 1.94 or later. v2 is made for RabbitMQ 3.12 and later: the checks use only
# commands that 3.10 answers too.
V2_VERSION=2.35.0
# native-tls (v2's default feature, though the checks speak plain HTTP) builds openssl-sys.
V2_DEBS=(libssl-dev pkg-config)
V2_BUILD_TIMEOUT=${RABBITMQADMIN_V2_BUILD_TIMEOUT:-780}

url=${1:?usage: run.sh AMQP_URL}
api=${WARREN_MANAGEMENT_URL:-http://127.0.0.1:15672}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop/rabbitmqadmin
mkdir -p "$cache"

# deb_version and ensure_debs, shared by the suites that install from Debian; run_checks.
source "$here/../lib/debian.sh"
source "$here/../lib/checks.sh"

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# The version of $V1_DEB that apt would download, after an `apt-get update` if it knows none.
v1_candidate() {
    local v
    v=$(apt-cache policy "$V1_DEB" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [[ -z $v || $v == "(none)" ]]; then
        as_root apt-get -qq -o DPkg::Lock::Timeout=120 update >&2 || return 1
        v=$(apt-cache policy "$V1_DEB" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    fi
    [[ -n $v && $v != "(none)" ]] && echo "$v"
}

# v1_download DIR: downloads $V1_DEB=$v1_deb into DIR (apt-get download writes into the current
# directory, and needs no root).
v1_download() {
    (cd "$1" && timeout 300 apt-get -q download "$V1_DEB=$v1_deb")
}

# v1_setup: sets v1 to the script and v1_deb to the package version it came from.
v1_setup() {
    v1_deb=$(v1_candidate) || { echo "apt knows no $V1_DEB package" >&2; return 1; }
    v1=$cache/v1-${v1_deb//[:\/]/_}/rabbitmqadmin
    [[ -s $v1 ]] && return 0
    local tmp
    tmp=$(mktemp -d "$cache/v1-download.XXXXXX")
    # When the download fails (stale package lists: that version is gone), the lists are updated
    # once and the version they offer then is tried.
    if ! v1_download "$tmp" >"$tmp/log" 2>&1; then
        as_root apt-get -q -o DPkg::Lock::Timeout=120 update >>"$tmp/log" 2>&1 || true
        v1_deb=$(v1_candidate 2>>"$tmp/log") || v1_deb=none
        v1=$cache/v1-${v1_deb//[:\/]/_}/rabbitmqadmin
        if [[ ! -s $v1 ]] && ! v1_download "$tmp" >>"$tmp/log" 2>&1; then
            tail -n 5 "$tmp/log" >&2
            rm -rf "$tmp"
            return 1
        fi
    fi
    # Only the script is kept; the rest of the package (the server) is not needed.
    if [[ ! -s $v1 ]]; then
        if ! dpkg-deb -x "$tmp"/"$V1_DEB"_*.deb "$tmp/x" >>"$tmp/log" 2>&1 ||
            [[ ! -s $tmp/x/usr/bin/rabbitmqadmin ]] ||
            ! mkdir -p "$(dirname "$v1")" ||
            ! cp "$tmp/x/usr/bin/rabbitmqadmin" "$v1.new" ||
            ! mv "$v1.new" "$v1"; then
            echo "could not unpack usr/bin/rabbitmqadmin from $(ls "$tmp"/*.deb 2>/dev/null)" >&2
            rm -rf "$tmp"
            return 1
        fi
    fi
    rm -rf "$tmp"
}

# v2_setup: sets v2 to the binary, building it once.
v2_setup() {
    local dir=$cache/v2-$V2_VERSION
    v2=$dir/bin/rabbitmqadmin
    if [[ -x $v2 ]] && [[ $("$v2" --version 2>/dev/null) == "rabbitmqadmin $V2_VERSION" ]]; then
        return 0
    fi
    command -v cargo >/dev/null || { echo "cargo is not installed" >&2; return 1; }
    ensure_debs "${V2_DEBS[@]}" || return 1
    echo "building rabbitmqadmin $V2_VERSION with cargo (once; at most ${V2_BUILD_TIMEOUT} s)"
    local log=$cache/v2-build.log started status
    started=$(date +%s)
    # --debug: the dev profile takes about half the CPU time of the crate's release profile
    # (fat LTO, one codegen unit), and the tool's speed does not matter here; no debug info
    # either. The target dir outlives a build cut off by the timeout, so the next run resumes.
    set +e
    CARGO_PROFILE_DEV_DEBUG=0 timeout --kill-after=10 "$V2_BUILD_TIMEOUT" \
        cargo install rabbitmqadmin --version "$V2_VERSION" --locked --debug --force \
        --root "$dir.new" --target-dir "$cache/v2-target" >"$log" 2>&1 </dev/null
    status=$?
    set -e
    if [[ $status != 0 ]]; then
        [[ $status == 124 || $status == 137 ]] &&
            echo "cargo install did not finish within ${V2_BUILD_TIMEOUT} s (the next run resumes)" >&2
        tail -n 15 "$log" >&2
        return 1
    fi
    rm -rf "$dir"
    mv "$dir.new" "$dir"
    rm -rf "$cache/v2-target"
    echo "built rabbitmqadmin $V2_VERSION in $(($(date +%s) - started)) s"
}

# One setup at a time per cache (two suites running at once would download and build twice).
exec 9>"$cache/.lock"
if ! timeout 30 flock 9; then
    echo "waiting for another run's setup of $cache"
    flock 9
fi

args=(--api "$api" --amqp "$url")
if v1_setup; then
    args+=(--v1 "$v1")
    python=$(python3 -c 'import platform; print(platform.python_version())')
    echo "rabbitmqadmin v1: $(python3 "$v1" --version) (Debian $V1_DEB $v1_deb), python $python"
else
    args+=(--setup-failure
        "setup_v1: could not download $V1_DEB (apt-get download) for its rabbitmqadmin")
fi
if v2_setup; then
    args+=(--v2 "$v2")
    echo "rabbitmqadmin v2: $("$v2" --version)"
else
    args+=(--setup-failure
        "setup_v2: could not build rabbitmqadmin $V2_VERSION (cargo install; log in $cache/v2-build.log)")
fi
flock -u 9
echo "management API: $api, AMQP: $url"

# The checks print the final line themselves; if they die before that, run_checks says so.
run_checks test_rabbitmqadmin.py python3 -u "$here/test_rabbitmqadmin.py" "${args[@]}"
