# Sourced by the suites whose checks print "ok NAME" or "FAIL NAME: REASON" and end with the line
# "N passed, N failed".

# run_checks NAME COMMAND...: runs the checks with stdin closed, showing their output. If they
# die before their summary line, prints one in the same format, counting the runner as a failure.
# Returns the checks' exit status (1 when they left no summary).
run_checks() {
    local name=$1 out status passed failed
    shift
    out=$(mktemp)
    set +e
    "$@" </dev/null | tee "$out"
    status=${PIPESTATUS[0]}
    set -e
    if ! tail -n 1 "$out" | grep -Eq '^[0-9]+ passed, [0-9]+ failed$'; then
        passed=$(grep -c '^ok ' "$out" || true)
        failed=$(grep -c '^FAIL ' "$out" || true)
        echo "FAIL runner: $name exited with status $status before its summary"
        echo "$passed passed, $((failed + 1)) failed"
        status=1
    fi
    rm -f "$out"
    return "$status"
}
