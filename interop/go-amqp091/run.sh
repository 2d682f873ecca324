#!/usr/bin/env bash
# Runs amqp091-go's own integration tests against a running broker.
# Usage: interop/go-amqp091/run.sh amqp://guest:guest@127.0.0.1:5672/%2f
#
# The client and its test files come from Debian (golang-github-rabbitmq-amqp091-go-dev, which
# ships the sources under /usr/share/gocode), built with Debian's Go in GOPATH mode: there is no
# Go module proxy to fetch from. The test binary is built once with the `integration` build tag,
# then every broker test (the Test and Example functions of the files that need a broker: those
# tagged `integration`, and those reading AMQP_URL) runs in its own process with a timeout, so a
# hang or a crash counts against that test only. The tests read the broker from AMQP_URL.
# Then stream_checks.go checks stream queues (x-queue-type: stream), which the integration tests
# do not cover. Each test or check prints "ok NAME" or "FAIL NAME: REASON"; the last line is
# "N passed, N failed", and the exit status is non-zero when any failed.
#
# Over TLS: with WARREN_AMQPS_URL, WARREN_TLS_CA, WARREN_TLS_CERT and WARREN_TLS_KEY set
# (interop/run-all.sh sets them), the tests run a second time, named NAME[tls], with AMQP_URL the
# amqps:// URL carrying cacertfile, certfile and keyfile (amqp091-go's own URL parameters: the
# client trusts the CA and shows its certificate, and logs in with the URL's password), except
# those in TLS_EXCLUDED; then tls_checks.go checks DialTLS, DialTLS_ExternalAuth (EXTERNAL login
# by the client certificate), and that an untrusted server or a foreign client certificate is
# refused. The certificate paths go into the URL as they are: they must need no escaping.
set -euo pipefail

# Debian 12 (bookworm) ships amqp091-go 1.5.0-2, goleak 1.2.0-1 and Go 1.19.
DEBS=(golang-go golang-github-rabbitmq-amqp091-go-dev golang-uber-goleak-dev)
PKG=github.com/rabbitmq/amqp091-go
SRC=/usr/share/gocode/src/$PKG
TEST_TIMEOUT=60 # seconds per test, unless listed below
declare -A TIMEOUTS=(
    # opens and closes 80,000 channels: about 40 s against RabbitMQ 3.10 on 2 cores
    [TestChannelCounterShouldNotPanicIssue136]=150
)
# Tests that fail against RabbitMQ too may be listed here, each with the reason. None do. Three
# tests check RabbitMQ-specific behaviour only when the server's product is "RabbitMQ":
# run-all.sh starts Warren for this suite with the settings in warren.toml, which announce it so.
declare -A EXCLUDED=()
# Tests left out of the run over TLS, with the reason.
declare -A TLS_EXCLUDED=(
    [TestPlaintextDialTLS]="checks an amqp:// URL with DialTLS; given an amqps:// one it skips"
    [TestChannelCounterShouldNotPanicIssue136]="80,000 channel opens: over TLS no result within 150 s against RabbitMQ 3.10 on 2 cores (40 s plain; Warren 8 s, 7 s plain); it checks the client's channel counter, which TLS does not change"
)

url=${1:?usage: run.sh AMQP_URL}
tls=0
[[ -n ${WARREN_AMQPS_URL:-} && -n ${WARREN_TLS_CA:-} && -n ${WARREN_TLS_CERT:-} && -n ${WARREN_TLS_KEY:-} ]] && tls=1
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop
work=$(mktemp -d "${TMPDIR:-/tmp}/go-amqp091.XXXXXX")
trap 'rm -rf "$work"' EXIT

# deb_version and ensure_debs, shared by the suites that install from Debian.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

setup() {
    ensure_debs "${DEBS[@]}" || return 1
    [[ -f $SRC/integration_test.go ]] || { echo "no $SRC/integration_test.go" >&2; return 1; }
    mkdir -p "$cache"
    # GOPATH mode: the sources stay where Debian put them; only the build cache is written.
    GO111MODULE=off GOFLAGS= GOPATH=/usr/share/gocode GOCACHE=$cache/go-build \
        go test -c -tags integration -o "$work/amqp091.test" "$PKG" >&2 || return 1
    GO111MODULE=off GOFLAGS= GOPATH=/usr/share/gocode GOCACHE=$cache/go-build \
        go build -o "$work/stream_checks" "$(dirname "${BASH_SOURCE[0]}")/stream_checks.go" >&2 || return 1
    if ((tls)); then
        GO111MODULE=off GOFLAGS= GOPATH=/usr/share/gocode GOCACHE=$cache/go-build \
            go build -o "$work/tls_checks" "$(dirname "${BASH_SOURCE[0]}")/tls_checks.go" >&2
    fi
}

if ! setup; then
    echo "FAIL setup: could not install ${DEBS[*]} or build the amqp091-go integration tests and checks"
    echo "0 passed, 1 failed"
    exit 1
fi
# Whatever happens below, the last line is the summary.
set +e
passed=0
failed=0
summary=0
trap 'rm -rf "$work"; if ((!summary)); then echo "FAIL runner: run.sh stopped early"; echo "$passed passed, $((failed + 1)) failed"; fi' EXIT
echo "$(go version | cut -d' ' -f3-), amqp091-go $(deb_version golang-github-rabbitmq-amqp091-go-dev)," \
    "goleak $(deb_version golang-uber-goleak-dev)"

# The broker tests, in source order.
tests=()
for f in "$SRC"/*_test.go; do
    grep -Eq '^//go:build .*integration|AMQP_URL' "$f" || continue
    while read -r t; do
        [[ $t == TestMain ]] || tests+=("$t")
    done < <(sed -nE 's/^func ((Test|Example)[A-Za-z0-9_]*)\(.*/\1/p' "$f")
done
listed=" $("$work/amqp091.test" -test.list '.*' 2>/dev/null | tr '\n' ' ') "
if ((${#tests[@]} == 0)); then
    echo "FAIL setup: found no broker tests in $SRC"
    failed=1
fi

# Why a test failed: its last `file.go:LINE:` message before "--- FAIL" (t.Fatal's, usually),
# else its first line of output.
failure_reason() {
    local r
    r=$(sed -n '1,/^--- FAIL/p' "$1" | grep -E '^[[:space:]]+[A-Za-z0-9_]+\.go:[0-9]+: ' | tail -n 1)
    [[ -n $r ]] || r=$(grep -Ev '^(=== RUN|--- FAIL|FAIL|PASS|exit status)|^[[:space:]]*$' "$1" | head -n 1)
    sed -E 's/^[[:space:]]+//' <<<"$r" | cut -c1-300
}

# run_test NAME LIMIT LOG: one test in its own process, its output in LOG.
run_test() {
    (cd "$work" && timeout --kill-after=5 "$2" ./amqp091.test -test.v -test.run "^$1\$") >"$3" 2>&1 </dev/null
}

# run_tests SUFFIX EXCLUDED_ARRAY_NAME: every test, against $AMQP_URL, named NAME$SUFFIX
run_tests() {
    local suffix=$1 t limit log started status seconds reason leaked
    local -n excluded=$2
    for t in "${tests[@]}"; do
        if [[ -n ${excluded[$t]:-} ]]; then
            echo "excluded $t$suffix: ${excluded[$t]}"
            continue
        fi
        limit=${TIMEOUTS[$t]:-$TEST_TIMEOUT}
        log=$work/$t.log
        started=$(date +%s.%N)
        if [[ $listed != *" $t "* ]]; then
            echo "test $t is not in the test binary" >"$log"
            status=1
        else
            run_test "$t" "$limit" "$log"
            status=$?
            # Some tests log from a goroutine that can outlive them (TestChannelExceptionWithCloseIssue43
            # logs a close notification after its last check); Go's testing panics when that goroutine
            # is scheduled after the test returned. That race is the test's own, whatever the broker:
            # it passed, so it runs once more and its second result counts.
            if [[ $status != 0 ]] && grep -q -- "^--- PASS: $t " "$log" &&
                grep -q "^panic: Log in goroutine after $t has completed" "$log"; then
                echo "   ($t passed, then its own goroutine logged after it returned: run again)"
                run_test "$t" "$limit" "$log"
                status=$?
            fi
        fi
        seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        if [[ $status == 0 ]] && grep -q -- "^--- PASS: $t " "$log"; then
            echo "ok $t$suffix"
            passed=$((passed + 1))
        else
            if [[ $status == 124 || $status == 137 ]]; then
                reason="no result within $limit s"
            elif grep -q '^goleak: ' "$log"; then
                # goleak (TestMain) found goroutines still running after the test, e.g. a connection
                # the test left open
                leaked=$(grep -oE '^ ?\[?Goroutine [0-9]+ in state [^,]+, with [^ ]+ on top' "$log" |
                    sed -E 's/^ ?\[?Goroutine [0-9]+ in state ([^,]+), with ([^ ]+) on top/\2 (\1)/' |
                    head -n 3 | paste -sd ';' | sed 's/;/; /g')
                reason="goleak: goroutines left running: ${leaked:-see the log}"
                grep -q -- "^--- PASS: $t " "$log" && reason="the test passed, then $reason"
            else
                reason=$(failure_reason "$log")
                reason="${reason:-exit status $status}"
            fi
            echo "FAIL $t$suffix: $reason"
            # the first lines of its output (repeats folded), for the log of the run
            grep -Ev '^[[:space:]]*$|^=== RUN' "$log" | uniq | head -n 25 | sed 's/^/   | /' >&2
            failed=$((failed + 1))
        fi
        if awk -v s="$seconds" 'BEGIN { exit !(s > 5) }'; then
            echo "   ($t$suffix took $seconds s)"
        fi
    done
}

# run_checks OUT COMMAND...: a checks program of this directory, which prints a line per check
# and then its own "N passed, N failed"; its lines are shown and count in the totals, and a crash
# or a hang before its summary counts as one more failure.
run_checks() {
    local out=$1 checks_failed
    shift
    timeout --kill-after=5 300 "$@" >"$out" 2>&1 </dev/null
    grep -Ev '^[0-9]+ passed, [0-9]+ failed$' "$out"
    passed=$((passed + $(grep -c '^ok ' "$out")))
    checks_failed=$(grep -c '^FAIL ' "$out")
    grep -Eq '^[0-9]+ passed, [0-9]+ failed$' "$out" || checks_failed=$((checks_failed + 1))
    failed=$((failed + checks_failed))
}

export AMQP_URL=$url
run_tests "" EXCLUDED
run_checks "$work/stream_checks.out" "$work/stream_checks" "$url"
if ((tls)); then
    echo "-- again over TLS: $WARREN_AMQPS_URL"
    query="cacertfile=$WARREN_TLS_CA&certfile=$WARREN_TLS_CERT&keyfile=$WARREN_TLS_KEY"
    AMQP_URL="$WARREN_AMQPS_URL$([[ $WARREN_AMQPS_URL == *\?* ]] && echo '&' || echo '?')$query"
    run_tests "[tls]" TLS_EXCLUDED
    run_checks "$work/tls_checks.out" "$work/tls_checks" "$WARREN_AMQPS_URL" "$WARREN_TLS_CA" "$WARREN_TLS_CERT" "$WARREN_TLS_KEY"
else
    echo "-- no TLS run: WARREN_AMQPS_URL, WARREN_TLS_CA, WARREN_TLS_CERT and WARREN_TLS_KEY are not all set"
fi
summary=1
echo "$passed passed, $failed failed"
((failed == 0))
