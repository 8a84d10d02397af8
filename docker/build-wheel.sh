#!/bin/sh
# Builds the inferd wheel of the source tree in the current folder into $1 (the Dockerfile's build stage).
# Env: PYTHON_VERSION (python${PYTHON_VERSION}, else python3, builds it), AIR_GAPPED=true (build requirements come
# only from the wheelhouse at /wheels), RUN_WHEEL_CHECK=true (fail above WHEEL_SIZE_LIMIT_MB).
set -eu
out=${1:?usage: build-wheel.sh OUT_DIR}
py=$(command -v "python${PYTHON_VERSION:-3}" || command -v python3 || true)
if [ -z "$py" ]; then
    echo "build-wheel.sh: the build base image has no python${PYTHON_VERSION:-3} or python3;" \
        "pick a BUILD_BASE_IMAGE with Python (e.g. python:3.12-slim-bookworm)." >&2
    exit 1
fi
pip_source="--find-links /wheels"
case "${AIR_GAPPED:-false}" in
    true) pip_source="--no-index --find-links /wheels" ;;
    false) ;;
    *) echo "build-wheel.sh: AIR_GAPPED must be true or false, got '${AIR_GAPPED}'." >&2; exit 1 ;;
esac
"$py" -m venv /tmp/buildenv
# shellcheck disable=SC2086  # pip_source is a list of options
PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /tmp/buildenv/bin/python -m pip wheel -q --no-deps \
    $pip_source -w "$out" .
rm -rf /tmp/buildenv build src/*.egg-info
case "${RUN_WHEEL_CHECK:-true}" in
    true) "$py" docker/check_wheel_size.py "$out" "${WHEEL_SIZE_LIMIT_MB:-5}" ;;
    false) ;;
    *) echo "build-wheel.sh: RUN_WHEEL_CHECK must be true or false, got '${RUN_WHEEL_CHECK}'." >&2; exit 1 ;;
esac
ls -l "$out"
