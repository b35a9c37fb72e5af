#!/bin/sh
# The install steps of Steward's container image, in one place: the Dockerfile's builder stage runs them, and
# tests/integration/deploy/test_image.py runs the same file (no container daemon there), so the two cannot drift.
#
#   install.sh deps    SRC PREFIX   a virtualenv at PREFIX with exactly SRC/requirements-runtime.lock (hashes checked)
#   install.sh project SRC PREFIX   the project from SRC (no dependencies), then the checks below
#   install.sh check       PREFIX   dependencies consistent; no dev stack (services.devstack, nats-server, bao)
#
# Environment: PYTHON (the interpreter the venv is built on, python3) and UV (the uv binary, uv). The runtime lock
# holds only the production dependencies: no dev or devstack extras (pyproject.toml); tests/unit/deploy/test_image
# keeps it in step with requirements.lock.
set -eu

PYTHON="${PYTHON:-python3}"
UV="${UV:-uv}"

usage() {
    echo "usage: $0 deps|project SRC PREFIX, or $0 check PREFIX" >&2
    exit 2
}

check() {
    prefix=$1
    "$UV" pip check --python "$prefix/bin/python"
    # The dev stack (dev CA, dev IdP, OpenBao bootstrap) and the server binaries it runs never ship: the build
    # context leaves services/devstack out (.dockerignore) and the runtime lock has no devstack extra.
    if "$prefix/bin/python" -c "import services.devstack" 2>/dev/null; then
        echo "install.sh: services.devstack is importable from $prefix: it must not be in the image" >&2
        exit 1
    fi
    for binary in nats-server bao openbao; do
        if [ -e "$prefix/bin/$binary" ]; then
            echo "install.sh: $prefix/bin/$binary is installed: dev-stack binaries must not be in the image" >&2
            exit 1
        fi
    done
    "$prefix/bin/steward" serve --help >/dev/null
}

[ $# -ge 2 ] || usage
step=$1
case "$step" in
    deps)
        [ $# -eq 3 ] || usage
        src=$2 prefix=$3
        "$PYTHON" -m venv --without-pip "$prefix"
        # --no-deps: exactly what the lock pins (an incomplete lock fails `check`, not silently resolves);
        # --require-hashes: every file matches the hash the lock recorded.
        "$UV" pip install --python "$prefix/bin/python" --require-hashes --no-deps --compile-bytecode \
            -r "$src/requirements-runtime.lock"
        ;;
    project)
        [ $# -eq 3 ] || usage
        src=$2 prefix=$3
        # A regular (not editable) install: the venv must not point back at the build context.
        "$UV" pip install --python "$prefix/bin/python" --no-deps --compile-bytecode "$src"
        check "$prefix"
        ;;
    check)
        [ $# -eq 2 ] || usage
        check "$2"
        ;;
    *)
        usage
        ;;
esac
