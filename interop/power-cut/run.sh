#!/usr/bin/env bash
# Power-cut rounds: confirmed messages and acknowledged declares must survive a power loss.
# Usage: interop/power-cut/run.sh [AMQP_URL]
# The URL is ignored: every round kills and restarts a Warren of its own ($WARREN_BIN, which
# interop/run-all.sh exports; default target/release/warren) on a free port, its data dir on a LazyFS
# mount that drops every un-fsynced write at the cut ($POWER_CUT, else the workplace's shared tool
# beside the checkout, ../shared/tools/power-cut, or at /work/shared/tools/power-cut).
# Needs root and /dev/fuse; without them it prints one "power-cut: skipped: ..." line and reports
# zero checks. Installs pika (pinned) like interop/python-pika; the last line printed is
# "N passed, N failed", and the exit status is non-zero when any check failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${WARREN_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/warren}
tool=${POWER_CUT:-}
if [[ -z $tool ]]; then
    for candidate in "$root/../shared/tools/power-cut/power-cut" /work/shared/tools/power-cut/power-cut; do
        [[ -x $candidate ]] && { tool=$candidate; break; }
    done
fi
source "$here/../lib/pika.sh"

skip() {
    echo "power-cut: skipped: $*"
    echo "0 passed, 0 failed"
    exit 0
}
[[ $(id -u) == 0 ]] || skip "not running as root (LazyFS mounts a FUSE file system)"
[[ -c /dev/fuse ]] || skip "/dev/fuse is absent"
( : <>/dev/fuse ) 2>/dev/null || skip "/dev/fuse cannot be opened (a container needs --device /dev/fuse --cap-add SYS_ADMIN)"
[[ -n $tool && -x $tool ]] || skip "the power-cut tool is absent (set POWER_CUT to its path)"

pika_setup || exit 1
if [[ ! -x $bin ]]; then
    echo "FAIL setup: no Warren binary at $bin (set WARREN_BIN)"
    echo "0 passed, 1 failed"
    exit 1
fi

# The first run builds LazyFS (and apt-installs its build deps) into ~/.cache/power-cut.
started=$(date +%s.%N)
if ! build_out=$("$tool" build 2>&1); then
    echo "$build_out" | tail -n 5
    echo "FAIL setup: power-cut build failed"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "power-cut: LazyFS ready in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s; warren: $bin"

# Each mount allocates its whole cache in RAM up front; a few seconds of publishing needs far less.
export POWER_CUT_CACHE_SIZE=${POWER_CUT_CACHE_SIZE:-256mb}
work=$(mktemp -d "${TMPDIR:-/tmp}/warren-powercut.XXXXXX")
# Stopped from outside (run-all's timeout), the checks get SIGTERM: they kill their Warren and
# unmount. Whatever mount is still left under $work is unmounted here.
on_term() {
    [[ -s $work/pid ]] && kill -TERM "$(cat "$work/pid")" 2>/dev/null && sleep 2
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | while read -r m; do
        "$tool" umount "$m" || true
    done
    exit 143
}
trap on_term TERM INT
source "$here/../lib/checks.sh"
status=0
# In the background, so that the trap runs at once: bash defers it while a foreground job runs.
run_checks power_cut.py "$pika_python" -u "$here/power_cut.py" "$bin" "$tool" "$work" &
wait $! || status=$?
# Logs and publisher records stay for a failed run.
if ((status == 0)); then rm -rf "$work"; else echo "   (warren logs and records: $work)"; fi
exit "$status"
