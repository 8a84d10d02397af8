#!/bin/sh
# Makes a runtime image of docker/Dockerfile (run as root at build time): Python, a venv at /opt/venv with torch and
# the inferd wheel, the healthcheck, and the non-root user 2000 (group 0) with group-writable HOME and caches.
# Env: VARIANT (cpu | cuda), PYTHON_VERSION, CUDA_VERSION (cuda), AIR_GAPPED (true: pip uses only /wheels and apt
# is never run), INFERD_EXTRAS (comma-separated extras of inferd), TORCH_INDEX_URL (empty: PyTorch's index for
# the variant). Mounts: /dist (the inferd wheel), /wheels (the wheelhouse), /inferd-docker (docker/ of the repo).
set -eu

die() {
    echo "install-runtime.sh: $*" >&2
    exit 1
}

VARIANT=${VARIANT:?VARIANT must be cpu or cuda}
AIR_GAPPED=${AIR_GAPPED:-false}
INFERD_EXTRAS=${INFERD_EXTRAS:-}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
PYTHON_VERSION=${PYTHON_VERSION:?PYTHON_VERSION is required}
case "$VARIANT" in cpu | cuda) ;; *) die "VARIANT must be cpu or cuda, got '$VARIANT'." ;; esac
case "$AIR_GAPPED" in true | false) ;; *) die "AIR_GAPPED must be true or false, got '$AIR_GAPPED'." ;; esac
case "$INFERD_EXTRAS" in *[!A-Za-z0-9._,-]*) die "INFERD_EXTRAS must be a comma-separated list of extra names, got '$INFERD_EXTRAS'." ;; esac

APT_UPDATED=false
apt_install() {
    [ "$AIR_GAPPED" = false ] || die "AIR_GAPPED=true but the base image lacks $*; use a base image that has them."
    command -v apt-get >/dev/null || die "the base image lacks $* and has no apt-get to install them."
    if [ "$APT_UPDATED" = false ]; then
        apt-get update -q
        APT_UPDATED=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# --- Python: the base image's python${PYTHON_VERSION}, else the distribution's, else deadsnakes on Ubuntu.
PY=python${PYTHON_VERSION}
has_python() { command -v "$PY" >/dev/null && "$PY" -c 'import ensurepip, venv' 2>/dev/null; }
if ! has_python; then
    if [ "$AIR_GAPPED" = false ] && command -v apt-get >/dev/null; then
        apt-get update -q
        APT_UPDATED=true
        if ! apt-cache show "$PY" >/dev/null 2>&1 && grep -qx 'ID=ubuntu' /etc/os-release; then
            apt_install software-properties-common gpg-agent
            add-apt-repository -y ppa:deadsnakes/ppa
            apt-get update -q
        fi
        apt-cache show "$PY" >/dev/null 2>&1 || die "PYTHON_VERSION=$PYTHON_VERSION: no package $PY for this base image."
    fi
    apt_install "$PY" "$PY-venv" ca-certificates
    has_python || die "$PY with venv could not be installed."
fi

# --- Triton compiles its launcher with a C compiler and the Python headers at run time (CUDA only).
if [ "$VARIANT" = cuda ]; then
    command -v gcc >/dev/null || command -v cc >/dev/null || apt_install gcc libc6-dev
    if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; then
        apt_install "$PY-dev"
    fi
fi
if [ "$APT_UPDATED" = true ]; then
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi

# --- The venv: torch first (from PyPI's torch index for the variant), then inferd and its dependencies.
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
"$PY" -m venv /opt/venv
PIP="/opt/venv/bin/python -m pip"
WHEEL=$(ls /dist/inferd-*.whl)
/opt/venv/bin/python /inferd-docker/check_extras.py "$WHEEL" "$INFERD_EXTRAS"
TARGET=$WHEEL
[ -z "$INFERD_EXTRAS" ] || TARGET="${WHEEL}[${INFERD_EXTRAS}]"
if [ "$AIR_GAPPED" = true ]; then
    $PIP install -q --no-index --find-links /wheels "$TARGET"
else
    if [ -z "$TORCH_INDEX_URL" ]; then
        if [ "$VARIANT" = cpu ]; then
            TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
        else
            CUDA_MAJOR=${CUDA_VERSION%%.*}
            CUDA_MINOR=${CUDA_VERSION#*.}
            CUDA_MINOR=${CUDA_MINOR%%.*}
            TORCH_INDEX_URL=https://download.pytorch.org/whl/cu${CUDA_MAJOR}${CUDA_MINOR}
        fi
    fi
    $PIP install -q --find-links /wheels --index-url "$TORCH_INDEX_URL" torch
    $PIP install -q --find-links /wheels "$TARGET"
fi
if [ "$VARIANT" = cuda ]; then
    /opt/venv/bin/python -c 'import sys, torch; sys.exit(torch.version.cuda is None and "torch " + torch.__version__ + " is not a CUDA build; check TORCH_INDEX_URL")'
fi
/opt/venv/bin/inferd --version

# --- Healthcheck, user 2000 in group 0, group-writable HOME and caches (any UID of group 0 can run the image).
install -D -m 0755 /inferd-docker/healthcheck.py /opt/inferd/healthcheck.py
if ! grep -q '^[^:]*:[^:]*:2000:' /etc/passwd; then
    if command -v useradd >/dev/null; then
        useradd --no-log-init --uid 2000 --gid 0 --home-dir /home/inferd --shell /bin/sh inferd
    else
        echo 'inferd:x:2000:0:inferd:/home/inferd:/bin/sh' >>/etc/passwd
    fi
fi
mkdir -p /home/inferd /root/.cache/huggingface /root/.cache/triton
chown -R 2000:0 /home/inferd /root/.cache
chmod -R g=u /home/inferd /root/.cache
chgrp 0 /root
chmod 0775 /root
