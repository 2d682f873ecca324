# Sourced by the interop suites that install their client from Debian's packages.

# The installed version of a Debian package, or nothing.
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
