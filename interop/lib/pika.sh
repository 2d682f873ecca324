# Sourced by the suites that run pika (interop/python-pika, interop/power-cut): pika_setup installs
# pika (pinned) into a venv under the user's cache dir once, and sets $pika_python to its python.

PIKA_VERSION=1.3.2
pika_venv=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/warren-interop/pika-venv
pika_python=$pika_venv/bin/python

have_pika() {
    "$1" -c "import pika, sys; sys.exit(pika.__version__ != '$PIKA_VERSION')" 2>/dev/null
}

# pika_setup: returns non-zero (after printing the suite's failure lines) when pika cannot be installed.
pika_setup() {
    mkdir -p "$(dirname "$pika_venv")"
    have_pika "$pika_python" && return 0
    rm -rf "$pika_venv"
    if "${PYTHON:-python3}" -m venv "$pika_venv" >&2 &&
        "$pika_python" -m pip install --disable-pip-version-check --no-input -q \
            "pika==$PIKA_VERSION" >&2 &&
        have_pika "$pika_python"; then
        return 0
    fi
    echo "FAIL setup: could not install pika==$PIKA_VERSION into $pika_venv"
    echo "0 passed, 1 failed"
    return 1
}

# pika_add MODULE PACKAGE VERSION: installs PACKAGE==VERSION (imported as MODULE) into pika's
# venv unless that version is there; returns non-zero (after printing the suite's failure lines)
# when it cannot be installed.
pika_add() {
    local module=$1 package=$2 version=$3
    "$pika_python" -c "import $module, sys; sys.exit($module.__version__ != '$version')" 2>/dev/null && return 0
    if "$pika_python" -m pip install --disable-pip-version-check --no-input -q "$package==$version" >&2; then
        return 0
    fi
    echo "FAIL setup: could not install $package==$version"
    echo "0 passed, 1 failed"
    return 1
}
