#!/usr/bin/env bash
# Drives Warren's embedded web UI in headless Chromium with Selenium, as a user would: logs in
# (and is refused with a wrong password), reads the Overview, finds a queue pika filled, opens
# it, publishes and gets from it, purges it, adds a user and its permissions and logs in as
# that user, imports a definitions file, deletes a queue. Each change is also checked from the
# other side (pika, or the management HTTP API). Then the UI's error states: a user tagged only
# management sees no Admin tab, is told "Permission refused" on #/admin/users and gets a note
# instead of node figures on the Overview; and a Warren the suite starts itself ($WARREN_BIN,
# else target/release/warren, on free loopback ports and a temp data dir) is stopped under the
# open queue list: the UI says it cannot reach the broker, keeps the page, and recovers once that
# Warren is started again.
# Usage: WARREN_MANAGEMENT_URL=http://127.0.0.1:15672 interop/web-ui/run.sh AMQP_URL
#
# The UI is served at WARREN_MANAGEMENT_URL/ (run-all.sh sets it; default http://127.0.0.1:15672),
# logged in as guest/guest; AMQP_URL is the same broker's AMQP listener. Debian's chromium and
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) are installed with apt-get when
# missing; pika and selenium (pinned) go into a venv under the user's cache dir, once.
# Screenshots (overview.png, queue.png, broker-down.png, and fail-CHECK.png for a failed check)
# go to ${WARREN_ARTEFACTS:-target/artefacts}/web-ui. Everything the checks create is named with a
# per-run id and deleted at the end, so the suite can share a broker with the others. The last
# line printed is "N passed, N failed", and the exit status is non-zero when any check failed.
set -euo pipefail

# 4.52.0, the newest, needs certifi>=2026.10.23, which the package index did not have yet.
SELENIUM_VERSION=4.51.0
url=${1:?usage: run.sh AMQP_URL}
management=${WARREN_MANAGEMENT_URL:-http://127.0.0.1:15672}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/../lib/debian.sh"
source "$here/../lib/pika.sh"
source "$here/../lib/checks.sh"

if ! ensure_debs chromium chromium-driver || [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    echo "FAIL setup: could not install Debian's chromium and chromium-driver"
    echo "0 passed, 1 failed"
    exit 1
fi
pika_setup || exit 1
pika_add selenium selenium "$SELENIUM_VERSION" || exit 1

shots=${WARREN_ARTEFACTS:-$root/target/artefacts}/web-ui
mkdir -p "$shots"
echo "$(/usr/bin/chromium --version 2>/dev/null), $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)," \
    "selenium $SELENIUM_VERSION, pika $PIKA_VERSION, UI at $management/"
echo "screenshots go to $shots"
run_checks test_web_ui.py "$pika_python" -u "$here/test_web_ui.py" "$url" "$management" "$shots"
