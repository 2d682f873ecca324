#!/usr/bin/env bash
# Runs py-amqp's own broker integration tests (t/integration/test_rmq.py from its sdist, unmodified)
# against a running broker.
# Usage: interop/python-py-amqp/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
# Installs amqp and pytest (pinned) into a venv and unpacks the amqp sdist, both under the user's
# cache dir. The tests read the broker address from RABBITMQ_HOST and RABBITMQ_5672_TCP, which are
# set from the URL; they always log in as guest/guest on the default vhost "/", so the URL must
# name those. Every test prints "ok NAME" or "FAIL NAME: REASON"; the last line printed is
# "N passed, N failed", and the exit status is non-zero when any test failed.
#
# The TLS tests connect to RABBITMQ_5671_TCP on the same host with the files under t/certs/
# (relative to the directory pytest runs in), which the sdist does not ship. With WARREN_AMQPS_URL,
# WARREN_TLS_CA, WARREN_TLS_CERT and WARREN_TLS_KEY set (interop/run-all.sh sets them), pytest
# runs in a copy of the sdist's tests whose t/certs/ holds those: ca_certificate.pem (the CA),
# client_certificate.pem and client_key.pem (the client's, which the broker must accept), and
# client_certificate_broken.pem / client_key_broken.pem (the same with their base64 mangled, as
# upstream's are: loading them fails); RABBITMQ_5671_TCP is WARREN_AMQPS_URL's port. Without
# them the TLS tests are deselected.
set -euo pipefail

AMQP_VERSION=5.4.2
PYTEST_VERSION=8.0.0          # amqp's requirements/test.txt: pytest>=6.2.5,<=8.0.0
PYTEST_TIMEOUT_VERSION=2.4.0  # not one of amqp's test requirements: bounds a test that hangs
TEST_TIMEOUT=30               # seconds per test
RUN_TIMEOUT=300               # seconds for the whole pytest run

# Tests that fail against RabbitMQ as well, so they say nothing about the broker. Each is
# deselected here, with the reason; pytest prints the deselected count.
# - test_tls_default_certs / test_tls_no_default_certs_fails connect to tls-v1-2.badssl.com:1012
#   on the internet, which is not reachable here (only the package registries are).
# pytest-rerunfailures (amqp's test requirement for the "flaky" marker, 5 reruns) is deliberately
# not installed: a test that fails once counts as failed.
DESELECT=(
    "t/integration/test_rmq.py::test_tls_default_certs"
    "t/integration/test_rmq.py::test_tls_no_default_certs_fails"
)
# The tests that need a TLS listener and t/certs/ (see above): test_connect[tls],
# test_tls_connect_fails, and every test_rabbitmq_operations "tls" variant.
TLS_TESTS=(
    "t/integration/test_rmq.py::test_connect[tls]"
    "t/integration/test_rmq.py::test_tls_connect_fails"
)
for p in "basic_publish-False-True" "basic_publish-True-True" "basic_publish-False-False" \
    "basic_publish-True-False" "basic_publish_confirm-False-True" "basic_publish_confirm-True-True" \
    "basic_publish_confirm-False-False" "basic_publish_confirm-True-False"; do
    TLS_TESTS+=("t/integration/test_rmq.py::test_rabbitmq_operations::test_publish_consume[tls-$p]")
done
for t in test_publish_get test_publish_get__short_int_header test_publish_get__short_short_int_header; do
    TLS_TESTS+=("t/integration/test_rmq.py::test_rabbitmq_operations::$t[tls]")
done

url=${1:?usage: run.sh AMQP_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop
venv=$cache/py-amqp-venv
src=$cache/py-amqp-src/amqp-$AMQP_VERSION
python=${PYTHON:-python3}

have_venv() {
    "$1" -c "
import sys, amqp, pytest, pytest_timeout
from importlib.metadata import version
sys.exit(not (amqp.__version__ == '$AMQP_VERSION' and pytest.__version__ == '$PYTEST_VERSION'
              and version('pytest-timeout') == '$PYTEST_TIMEOUT_VERSION'))" 2>/dev/null
}

setup() {
    mkdir -p "$cache"
    if ! have_venv "$venv/bin/python"; then
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2 || return 1
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            "amqp==$AMQP_VERSION" "pytest==$PYTEST_VERSION" \
            "pytest-timeout==$PYTEST_TIMEOUT_VERSION" >&2 || return 1
        have_venv "$venv/bin/python" || return 1
    fi
    if [[ ! -f $src/t/integration/test_rmq.py ]]; then
        local tmp
        tmp=$(mktemp -d "$cache/py-amqp-src.XXXXXX")
        "$venv/bin/python" -m pip download --disable-pip-version-check --no-input -q \
            --no-binary :all: --no-deps "amqp==$AMQP_VERSION" -d "$tmp" >&2 &&
            tar -xzf "$tmp/amqp-$AMQP_VERSION.tar.gz" -C "$tmp" &&
            [[ -f $tmp/amqp-$AMQP_VERSION/t/integration/test_rmq.py ]] &&
            mkdir -p "$(dirname "$src")" && rm -rf "$src" &&
            mv "$tmp/amqp-$AMQP_VERSION" "$src"
        local ok=$?
        rm -rf "$tmp"
        return $ok
    fi
}

if ! setup; then
    echo "FAIL setup: could not install amqp==$AMQP_VERSION and its sdist's tests under $cache"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), amqp $AMQP_VERSION, pytest $PYTEST_VERSION, tests from $src"

# RABBITMQ_HOST / RABBITMQ_5672_TCP from the URL
if ! eval "$("$venv/bin/python" - "$url" <<'PY'
import shlex, sys
from urllib.parse import urlsplit, unquote
u = urlsplit(sys.argv[1])
vhost = unquote(u.path[1:]) if u.path else "/"
print(f"host={shlex.quote(u.hostname or 'localhost')} port={u.port or 5672}")
if (unquote(u.username or "guest"), unquote(u.password or "guest"), vhost or "/") != ("guest", "guest", "/"):
    print("echo 'note: test_rmq.py always logs in as guest/guest on vhost /, whatever the URL says'")
PY
)"; then
    echo "FAIL setup: cannot parse $url"
    echo "0 passed, 1 failed"
    exit 1
fi
export RABBITMQ_HOST=$host RABBITMQ_5672_TCP=$port

set +e
out=$(mktemp -d)
tests_dir=$src
if [[ -n ${WARREN_AMQPS_URL:-} && -n ${WARREN_TLS_CA:-} && -n ${WARREN_TLS_CERT:-} && -n ${WARREN_TLS_KEY:-} ]]; then
    # the sdist's tests and settings (unmodified) beside the certificates, the package linked
    tests_dir=$out/src
    mkdir -p "$tests_dir" &&
        cp -r "$src/t" "$src/setup.cfg" "$tests_dir/" &&
        ln -s "$src/amqp" "$tests_dir/amqp" &&
        mkdir -p "$tests_dir/t/certs" &&
        cp "$WARREN_TLS_CA" "$tests_dir/t/certs/ca_certificate.pem" &&
        cp "$WARREN_TLS_CERT" "$tests_dir/t/certs/client_certificate.pem" &&
        cp "$WARREN_TLS_KEY" "$tests_dir/t/certs/client_key.pem" &&
        sed '2s/^....../Broken/' "$WARREN_TLS_CERT" >"$tests_dir/t/certs/client_certificate_broken.pem" &&
        sed '2s/^....../Broken/' "$WARREN_TLS_KEY" >"$tests_dir/t/certs/client_key_broken.pem"
    tls_port=$("$venv/bin/python" -c 'import sys; from urllib.parse import urlsplit; print(urlsplit(sys.argv[1]).port or 5671)' "$WARREN_AMQPS_URL")
    export RABBITMQ_5671_TCP=$tls_port
    echo "TLS tests: port $tls_port, certificates in $tests_dir/t/certs"
else
    echo "TLS tests deselected: WARREN_AMQPS_URL, WARREN_TLS_CA, WARREN_TLS_CERT and WARREN_TLS_KEY are not all set"
    DESELECT+=("${TLS_TESTS[@]}")
fi
deselect_args=()
for d in "${DESELECT[@]}"; do deselect_args+=(--deselect "$d"); done
(
    cd "$tests_dir" &&
        timeout --kill-after=10 "$RUN_TIMEOUT" "$venv/bin/python" -m pytest t/integration/test_rmq.py \
            -p no:cacheprovider -o addopts="" -rfE -v -W ignore::pytest.PytestUnknownMarkWarning --timeout="$TEST_TIMEOUT" \
            --junitxml="$out/junit.xml" "${deselect_args[@]}"
) >"$out/pytest.log" 2>&1
status=$?
set -e
# pytest's own report in full when something went wrong, else just its closing line
if [[ $status == 0 ]]; then
    grep -E '^=+ .* in [0-9.]+s' "$out/pytest.log" | tail -n 1 | sed 's/^/pytest: /' || true
else
    sed 's/^/  | /' "$out/pytest.log"
fi
[[ $status == 124 || $status == 137 ]] && echo "pytest did not finish within $RUN_TIMEOUT s"

# One line per test from pytest's JUnit XML, then the summary. A skipped test counts as failed:
# nothing in test_rmq.py skips, so a skip is news.
"$venv/bin/python" - "$out/junit.xml" "$status" <<'PY'
import sys
import xml.etree.ElementTree as ET

path, status = sys.argv[1], int(sys.argv[2])
passed = failed = 0
try:
    cases = ET.parse(path).getroot().iter("testcase")
except Exception as e:
    cases = []
    print(f"FAIL runner: no JUnit report from pytest (exit status {status}): {e}")
    failed += 1
for case in cases:
    name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}".lstrip(":")
    if name.startswith("test_rmq::"):
        name = name[len("test_rmq::"):]
    problem = None
    for kind in ("failure", "error", "skipped"):
        el = case.find(kind)
        if el is not None:
            msg = (el.get("message") or el.text or "").strip().splitlines()
            problem = f"{kind}: {msg[0] if msg else '?'}"
            break
    if problem is None:
        print(f"ok {name}")
        passed += 1
    else:
        print(f"FAIL {name}: {problem[:300]}")
        failed += 1
if status not in (0, 1) and failed == 0:
    print(f"FAIL runner: pytest exited with status {status}")
    failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
PY
status=$?
rm -rf "$out"
exit "$status"
