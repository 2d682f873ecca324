#!/usr/bin/env bash
# Runs every interop suite (interop/*/run.sh URL) against a fresh Warren.
#
# Starts target/release/warren (building it if missing) on a free loopback port with a temp data
# dir, runs each suite with amqp://guest:guest@127.0.0.1:PORT/%2f, prints one table, stops Warren
# with SIGTERM and checks that it exited 0. Exits non-zero if a suite failed or the broker crashed.
# The last line is the total: "N passed, N failed".
#
# Suites that need to restart the broker run "$WARREN_RESTART_CMD": it stops Warren (SIGTERM) and
# starts it again on the same port and data dir, and returns once the port accepts connections.
# Suites that start Warren on their own run "$WARREN_BIN", the binary used here.
#
# Warren also listens for AMQPS on another free port, with certificates made for the run by
# interop/lib/tls.sh (a throwaway CA, a server certificate for localhost and 127.0.0.1, a client
# certificate "O=Warren interop, CN=guest"), client certificates verified (verify_peer) but not
# required (fail_if_no_peer_cert = false, so password logins work over TLS too), and EXTERNAL
# logins named by the certificate's common name (guest). Suites with TLS checks find it here:
#   WARREN_AMQPS_URL   amqps://guest:guest@127.0.0.1:TLS_PORT/%2f
#   WARREN_AMQPS_PORT  TLS_PORT
#   WARREN_TLS_CA      the CA certificate (PEM) that signed the server's and the client's
#   WARREN_TLS_CERT    the client certificate (PEM), CN=guest
#   WARREN_TLS_KEY     its private key (PEM)
# To point a suite at another TLS broker (benches/rabbitmq-tls.sh), set these yourself and run its
# run.sh. If the certificates cannot be made, the run counts one failure and the suites skip their
# TLS checks.
#
# Environment: WARREN_BIN (binary to use), INTEROP_SUITES (space-separated suite names to run,
# default all), INTEROP_SUITE_TIMEOUT (seconds per suite, default 900), CARGO_TARGET_DIR.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
bin=${WARREN_BIN:-$target_dir/release/warren}
if [[ ! -x $bin ]]; then
    echo "== $bin is missing: cargo build --release"
    if ! cargo build --release || [[ ! -x $bin ]]; then
        echo "cannot build $bin"
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

state=$(mktemp -d "${TMPDIR:-/tmp}/warren-interop.XXXXXX")
data_dir=$(mktemp -d "${TMPDIR:-/tmp}/warren-interop-data.XXXXXX")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
management_port=$(free_port)
url="amqp://guest:guest@127.0.0.1:$port/%2f"
# Suites that drive the management HTTP API find it here.
export WARREN_MANAGEMENT_URL="http://127.0.0.1:$management_port"
prometheus_port=$(free_port)
export WARREN_PROMETHEUS_URL="http://127.0.0.1:$prometheus_port"
log=$state/warren.log

# AMQPS: certificates and the [tls] settings every start of Warren gets (in $state/config.toml,
# after the suite's own settings, if any)
source "$root/interop/lib/debian.sh"
source "$root/interop/lib/tls.sh"
tls_port=$(free_port)
tls_dir=$state/tls
tls_failed=0
unset WARREN_AMQPS_URL WARREN_AMQPS_PORT WARREN_TLS_CA WARREN_TLS_CERT WARREN_TLS_KEY
if { command -v openssl >/dev/null || ensure_debs openssl; } && tls_make_certs "$tls_dir"; then
    cat >"$state/tls.toml" <<EOF
[tls]
listen = "127.0.0.1:$tls_port"
certfile = "$tls_dir/server.pem"
keyfile = "$tls_dir/server.key"
cacertfile = "$tls_dir/ca.pem"
verify = "verify_peer"
fail_if_no_peer_cert = false
cert_login_from = "common_name"
EOF
    export WARREN_AMQPS_URL="amqps://guest:guest@127.0.0.1:$tls_port/%2f" WARREN_AMQPS_PORT=$tls_port
    export WARREN_TLS_CA=$tls_dir/ca.pem WARREN_TLS_CERT=$tls_dir/client.pem WARREN_TLS_KEY=$tls_dir/client.key
else
    echo "!! could not make TLS certificates: the suites run without AMQPS"
    tls_failed=1
    tls_port=""
    : >"$state/tls.toml"
fi
cp "$state/tls.toml" "$state/config.toml"

# launch.sh starts Warren in the background and records its pid; a watcher (its parent) writes
# Warren's exit status to rc.PID when it ends, so whoever stops it can check the status even
# though Warren is not their child.
cat >"$state/launch.sh" <<EOF
#!/usr/bin/env bash
set -u
config=()
[[ -s "$state/config.toml" ]] && config=(--config "$state/config.toml")
"$bin" serve "\${config[@]}" --listen "127.0.0.1:$port" --management-listen "127.0.0.1:$management_port" --prometheus-listen "127.0.0.1:$prometheus_port" --data-dir "$data_dir" >>"$log" 2>&1 </dev/null &
pid=\$!
echo \$pid >"$state/pid"
wait \$pid
rc=\$?
echo "[run-all.sh] warren pid \$pid exited with status \$rc" >>"$log"
echo \$rc >"$state/rc.\$pid"
EOF

# wait_up: until the port (and the AMQPS one) accepts (30 s), failing early if Warren exits.
cat >"$state/wait-up.sh" <<EOF
#!/usr/bin/env bash
set -u
for _ in \$(seq 300); do
    pid=\$(cat "$state/pid" 2>/dev/null || true)
    if [[ -n \$pid ]]; then
        if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null &&
            { [[ -z "$tls_port" ]] || (exec 3<>/dev/tcp/127.0.0.1/$tls_port) 2>/dev/null; }; then
            exit 0
        fi
        if [[ -e "$state/rc.\$pid" ]]; then
            echo "warren exited with status \$(cat "$state/rc.\$pid") before accepting connections" >&2
            exit 1
        fi
    fi
    sleep 0.1
done
echo "warren did not accept connections on 127.0.0.1:$port within 30 s" >&2
exit 1
EOF

# stop.sh: SIGTERM, wait up to 15 s for the exit status, SIGKILL after that. Exits 0 only when
# Warren exited 0 by itself. Any other outcome is appended to $state/crashes.
cat >"$state/stop.sh" <<EOF
#!/usr/bin/env bash
set -u
pid=\$(cat "$state/pid" 2>/dev/null || true)
[[ -n \$pid ]] || exit 0
rm -f "$state/pid"
if [[ ! -e "$state/rc.\$pid" ]]; then
    kill -TERM "\$pid" 2>/dev/null || true
fi
for _ in \$(seq 150); do
    [[ -e "$state/rc.\$pid" ]] && break
    sleep 0.1
done
if [[ ! -e "$state/rc.\$pid" ]]; then
    kill -KILL "\$pid" 2>/dev/null || true
    echo "warren (pid \$pid) did not exit within 15 s of SIGTERM; killed" | tee -a "$state/crashes" >&2
    exit 1
fi
rc=\$(cat "$state/rc.\$pid")
if [[ \$rc != 0 ]]; then
    echo "warren (pid \$pid) exited with status \$rc" | tee -a "$state/crashes" >&2
    exit 1
fi
EOF

cat >"$state/start.sh" <<EOF
#!/usr/bin/env bash
set -u
rm -f "$state/pid"
setsid bash "$state/launch.sh" </dev/null >/dev/null 2>&1 &
bash "$state/wait-up.sh"
EOF

cat >"$state/restart.sh" <<EOF
#!/usr/bin/env bash
set -u
bash "$state/stop.sh"
status=\$?
bash "$state/start.sh" || exit 1
exit \$status
EOF
chmod +x "$state"/*.sh

export WARREN_RESTART_CMD="bash $state/restart.sh"
export WARREN_URL=$url
# Suites that run Warren themselves (interop/power-cut) use the same binary.
export WARREN_BIN=$bin

cleanup() {
    bash "$state/stop.sh" >/dev/null 2>&1 || true
    rm -rf "$data_dir"
}
# On success the state dir (scripts, warren.log, suite outputs) goes too; on failure it stays.
trap cleanup EXIT

# alive: Warren's pid is recorded and it has not exited.
alive() {
    local pid
    pid=$(cat "$state/pid" 2>/dev/null || true)
    [[ -n $pid && ! -e $state/rc.$pid ]] && kill -0 "$pid" 2>/dev/null
}

log_shown=0
show_log() {
    log_shown=1
    echo "-- last lines of the warren log ($log):"
    tail -n 40 "$log" | sed 's/\x1b\[[0-9;]*m//g'
    echo "--"
}

echo "== warren: $bin"
"$bin" --version
echo "== starting warren on 127.0.0.1:$port${tls_port:+ (AMQPS on 127.0.0.1:$tls_port)}, data dir $data_dir"
if ! bash "$state/start.sh"; then
    show_log
    echo "0 passed, 1 failed"
    exit 1
fi

suites=()
if [[ -n ${INTEROP_SUITES:-} ]]; then
    for s in $INTEROP_SUITES; do suites+=("interop/$s/run.sh"); done
else
    for s in interop/*/run.sh; do [[ -e $s ]] && suites+=("$s"); done
fi
suite_timeout=${INTEROP_SUITE_TIMEOUT:-900}

total_passed=0
total_failed=0
rows=()
broker_failed=0
for script in "${suites[@]}"; do
    suite=$(basename "$(dirname "$script")")
    echo
    echo "== suite $suite: $script $url"
    out=$state/$suite.out
    # A suite that needs broker settings of its own (interop/SUITE/warren.toml) gets a Warren
    # restarted with them, on the same port and data dir, and the default one back after it.
    suite_config=$(dirname "$script")/warren.toml
    if [[ -e $suite_config ]]; then
        echo "(restarting warren with $suite_config)"
        cat "$suite_config" "$state/tls.toml" >"$state/config.toml"
        bash "$state/restart.sh" || { show_log; broker_failed=1; }
    fi
    started=$(date +%s.%N)
    set +e
    timeout --kill-after=10 "$suite_timeout" bash "$script" "$url" </dev/null 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    set -e
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    last=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 || true)
    note=""
    if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
        passed=${BASH_REMATCH[1]}
        failed=${BASH_REMATCH[2]}
    else
        passed=0
        failed=1
        note="no summary line"
    fi
    if [[ $status == 124 || $status == 137 ]]; then
        [[ -z $note ]] && failed=$((failed + 1))
        note="timed out after ${suite_timeout}s"
    elif [[ $status != 0 && $failed == 0 ]]; then
        note="exit status $status"
        failed=1
    fi
    if ! alive; then
        echo "!! warren is not running after suite $suite"
        echo "warren died during suite $suite" >>"$state/crashes"
        show_log
        broker_failed=1
        note="${note:+$note; }broker died"
        bash "$state/start.sh" || { show_log; break; }
    fi
    if [[ -e $suite_config ]]; then
        cp "$state/tls.toml" "$state/config.toml"
        bash "$state/restart.sh" || { show_log; broker_failed=1; }
    fi
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    rows+=("$suite|$passed|$failed|$seconds|$note")
done

echo
echo "== stopping warren (SIGTERM)"
if bash "$state/stop.sh"; then
    echo "warren exited 0"
fi
if [[ -s $state/crashes ]]; then
    broker_failed=1
    echo "!! broker problems:"
    sed 's/^/   /' "$state/crashes"
    ((log_shown)) || show_log
fi

echo
echo "== interop results"
printf '%-24s %7s %7s %9s  %s\n' suite passed failed seconds ""
for row in "${rows[@]}"; do
    IFS='|' read -r s p f t n <<<"$row"
    printf '%-24s %7s %7s %9s  %s\n' "$s" "$p" "$f" "$t" "$n"
done
if ((${#rows[@]} == 0)); then
    echo "(no suites found under interop/*/run.sh)"
fi
if ((tls_failed)); then
    echo "tls: FAILED (no certificates: no suite ran its TLS checks)"
    total_failed=$((total_failed + 1))
fi
if ((broker_failed)); then
    echo "broker: FAILED (crashed, or did not exit 0 on SIGTERM)"
    total_failed=$((total_failed + 1))
else
    echo "broker: ok (exited 0 on SIGTERM)"
fi
echo "$total_passed passed, $total_failed failed"
if ((total_failed > 0 || ${#rows[@]} == 0)); then
    exit 1
fi
rm -rf "$state"
