#!/usr/bin/env bash
# CI step for the Docker image (docker/Dockerfile), run as root on a CPU-only machine with no Docker engine and no
# registry: podman (runc, .ci/containers.conf) builds the inferd-openai-cpu target on a Debian base made with
# debootstrap, from a wheelhouse prepared here, with no network inside the build; then runs the image for real:
#   - default user (2000): --model /models/tiny mounted, one chat completion through the openai client,
#     HEALTHCHECK, SIGTERM -> exit 0;
#   - --user 1234:0 with a seed-style HF cache mount (-v HF:/root/.cache/huggingface), HF_HUB_OFFLINE=1, a hub id
#     as MODEL, --port 9000, HF_TOKEN visible to huggingface_hub, writable HOME / HF_HOME / TRITON_CACHE_DIR;
#   - a derived image (FROM the image, pip install "inferd[fast-http]==<version>");
#   - RUN_WHEEL_CHECK=true failing the build above the size limit; hadolint on the Dockerfile; the image size.
# Needs the project's venv (.venv, from scripts/dev-setup.sh). Caches the Debian base (podman image and tarball in
# $INFERD_CI_CACHE, default /var/cache/inferd-ci) and the wheelhouse; removes its containers and images at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
CACHE=${INFERD_CI_CACHE:-/var/cache/inferd-ci}
SUITE=bookworm # its python3 (3.11) must match the venv's, whose wheels the image installs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-venv
BASE_IMAGE=localhost/inferd-ci-base:$SUITE-${BASE_PACKAGES//,/-}
IMAGE=localhost/inferd-openai-cpu:ci-$$
DERIVED=localhost/inferd-openai-cpu-fast-http:ci-$$
CONTEXT_WHEELS=docker/wheelhouse/.ci-$$ # inside the build context; docker/wheelhouse/.gitignore keeps it out of git
export CONTAINERS_CONF=$ROOT/.ci/containers.conf
WORK=$(mktemp -d /tmp/inferd-container-test.XXXXXX)
chmod 755 "$WORK"
CONTAINERS=()

log() { printf '[container-test %4ds] %s\n' "$SECONDS" "$*"; }
# podman logs systemd's absence at every start of an image with a HEALTHCHECK; that line is noise here.
quiet() { "$@" 2> >(grep -v 'systemd connection' >&2); }

cleanup() {
    local status=$?
    for c in "${CONTAINERS[@]}"; do quiet podman rm -f -t 5 "$c" >/dev/null || true; done
    podman rmi -f "$DERIVED" "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "${ROOT:?}/${CONTEXT_WHEELS:?}" "${WORK:?}"
    if [ "$status" -eq 0 ]; then log "passed"; else log "FAILED (exit $status)"; fi
}
trap cleanup EXIT

# --- 1. Tools (CI machines are fresh). crun is not used: it fails on this machine's cgroup layout.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing podman, runc, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap uidmap slirp4netns \
        fuse-overlayfs iptables >/dev/null
fi
[ -x "$PY" ] || { echo "container-test: no venv python at $PY; run scripts/dev-setup.sh first." >&2; exit 1; }
HOST_PY=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
TORCH_VERSION=$("$PY" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')
INFERD_VERSION=$("$PY" -c 'from importlib.metadata import version; print(version("inferd"))')
mkdir -p "$CACHE"

# --- 2. In parallel: the Debian base image, the wheelhouse, the tiny models, hadolint.
make_base() {
    if podman image exists "$BASE_IMAGE"; then
        echo "result: $BASE_IMAGE cached"
        return
    fi
    local tarball
    tarball=$CACHE/debian-$SUITE-$(dpkg --print-architecture)-${BASE_PACKAGES//,/-}.tar
    if [ ! -s "$tarball" ]; then
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$WORK/rootfs" "$MIRROR"
        rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
        tar -C "$WORK/rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$WORK/rootfs"
    fi
    podman import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE"
    echo "result: $BASE_IMAGE imported from $tarball"
}
make_wheelhouse() {
    # CPU torch (pip takes the machine's on-disk build), inferd's dependencies and extras, the wheel build tools;
    # downloaded again only when pyproject.toml or the torch version changes.
    local wh=$CACHE/wheelhouse-py$HOST_PY key
    key=$( (sha256sum pyproject.toml && echo "torch==$TORCH_VERSION") | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$wh/.key" 2>/dev/null)" != "$key" ]; then
        "$PY" -m pip download -q -d "$wh" "torch==$TORCH_VERSION" "setuptools>=68" wheel ".[fast-http]"
        echo "$key" >"$wh/.key"
    fi
    mkdir -p "$CONTEXT_WHEELS"
    cp -al "$wh/." "$CONTEXT_WHEELS/" 2>/dev/null || cp -a "$wh/." "$CONTEXT_WHEELS/"
    echo "result: $(find "$CONTEXT_WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$CONTEXT_WHEELS" | cut -f1)"
}
make_models() { "$PY" .ci/container_helpers.py models "$WORK/models" && echo "result: tiny Qwen3 and its HF cache"; }
lint() {
    [ -x "$(dirname "$PY")/hadolint" ] || "$PY" -m pip install -q -e ".[container-test]"
    "$(dirname "$PY")/hadolint" docker/Dockerfile && echo "result: hadolint finds nothing in docker/Dockerfile"
}
log "preparing base image, wheelhouse, tiny model and hadolint in parallel"
declare -A JOBS=()
for job in make_base make_wheelhouse make_models lint; do
    "$job" >"$WORK/$job.log" 2>&1 &
    JOBS[$job]=$!
done
for job in make_base make_wheelhouse make_models lint; do
    if ! wait "${JOBS[$job]}"; then
        log "$job failed:"
        tail -40 "$WORK/$job.log"
        exit 1
    fi
    sed -n "s/^result: /  $job: /p" "$WORK/$job.log"
done
BASE_PY=$(quiet podman run --rm "$BASE_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$BASE_PY" != "$HOST_PY" ]; then
    echo "container-test: $SUITE's python3 is $BASE_PY but the wheelhouse is for $HOST_PY; pick a suite whose" \
        "python3 is $HOST_PY or run with a venv of Python $BASE_PY." >&2
    exit 1
fi
log "ready: base $BASE_IMAGE (python $BASE_PY), torch $TORCH_VERSION, inferd $INFERD_VERSION"

# --- 3. RUN_WHEEL_CHECK=true must fail a wheel over the limit; then the real, air-gapped build of the CPU target.
BUILD=(podman build --format docker --network none --pull=never --layers=false --force-rm -f docker/Dockerfile
    --build-arg "BUILD_BASE_IMAGE=$BASE_IMAGE" --build-arg "CPU_BASE_IMAGE=$BASE_IMAGE"
    --build-arg "PYTHON_VERSION=$BASE_PY" --build-arg "WHEELHOUSE=$CONTEXT_WHEELS" --build-arg AIR_GAPPED=true)
if "${BUILD[@]}" --target build --build-arg WHEEL_SIZE_LIMIT_MB=0.01 . >"$WORK/wheel-check.log" 2>&1; then
    echo "container-test: RUN_WHEEL_CHECK=true accepted a wheel over a 0.01 MB limit" >&2
    exit 1
fi
grep -q 'over the 0.01 MiB limit' "$WORK/wheel-check.log" || { tail -20 "$WORK/wheel-check.log"; exit 1; }
log "RUN_WHEEL_CHECK=true fails a wheel over WHEEL_SIZE_LIMIT_MB, as it should"
log "building $IMAGE (target inferd-openai-cpu, no network)"
"${BUILD[@]}" --target inferd-openai-cpu -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE: $((SIZE / 1000000)) MB"

# --- 4. Two servers at once: the default user with a mounted model folder, and --user 1234:0 with an HF cache.
PORT_A=$("$PY" .ci/container_helpers.py free-port)
PORT_B=$("$PY" .ci/container_helpers.py free-port)
A=inferd-ci-$$-default
B=inferd-ci-$$-anyuid
CONTAINERS+=("$A" "$B")
quiet podman run -d --name "$A" -p "127.0.0.1:$PORT_A:8000" -v "$WORK/models/tiny:/models/tiny:ro" "$IMAGE" \
    --model /models/tiny --max-model-len 256 --dtype float32 --served-model-name tiny >/dev/null
quiet podman run -d --name "$B" --user 1234:0 -p "127.0.0.1:$PORT_B:9000" \
    -v "$WORK/models/hf:/root/.cache/huggingface:ro" -e HF_HUB_OFFLINE=1 -e HF_TOKEN=hf_ci_token "$IMAGE" \
    inferd-ci/tiny --port 9000 --max-model-len 256 --dtype float32 >/dev/null
"$PY" .ci/container_helpers.py wait 300 "$A=http://127.0.0.1:$PORT_A" "$B=http://127.0.0.1:$PORT_B"
"$PY" .ci/container_helpers.py chat "http://127.0.0.1:$PORT_A" tiny
"$PY" .ci/container_helpers.py chat "http://127.0.0.1:$PORT_B" inferd-ci/tiny
for c in "$A" "$B"; do
    quiet podman healthcheck run "$c" || { echo "container-test: HEALTHCHECK of $c failed" >&2; exit 1; }
done
log "HEALTHCHECK healthy on port 8000 and on --port 9000"
[ "$(podman exec "$A" id -u)" = 2000 ] || { echo "container-test: the image does not run as user 2000" >&2; exit 1; }
podman exec "$B" sh -ec '
    [ "$(id -u):$(id -g)" = 1234:0 ]
    touch "$HOME/probe" "$TRITON_CACHE_DIR/probe"
    [ "$(python -c "import huggingface_hub; print(huggingface_hub.get_token())")" = hf_ci_token ]'
# shellcheck disable=SC2016  # expanded inside the container
quiet podman run --rm --user 4321:0 --entrypoint sh "$IMAGE" -ec 'touch "$HOME/p" "$HF_HOME/p" "$TRITON_CACHE_DIR/p"'
log "user 2000 by default; --user 1234:0 / 4321:0 write HOME, HF_HOME, TRITON_CACHE_DIR; HF_TOKEN reaches huggingface_hub"
for c in "$A" "$B"; do
    quiet podman stop -t 60 "$c" >/dev/null
    code=$(podman container inspect --format '{{.State.ExitCode}}' "$c")
    [ "$code" = 0 ] || { echo "container-test: $c exited $code on SIGTERM" >&2; podman logs --tail 30 "$c"; exit 1; }
done
log "both servers exited 0 on SIGTERM"

# --- 5. A derived image adds an extra of the installed version (docs/deployment/docker.md, "Extras").
mkdir -p "$WORK/derived"
cp -al "$CONTEXT_WHEELS" "$WORK/derived/wheels" 2>/dev/null || cp -a "$CONTEXT_WHEELS" "$WORK/derived/wheels"
cat >"$WORK/derived/Containerfile" <<EOF
FROM $IMAGE
USER root
RUN --mount=type=bind,source=wheels,target=/wheels \\
    pip install --no-cache-dir --no-index --find-links /wheels "inferd[fast-http]==$INFERD_VERSION"
USER 2000:0
EOF
podman build --format docker --network none --pull=never --layers=false --force-rm -t "$DERIVED" \
    -f "$WORK/derived/Containerfile" "$WORK/derived" >"$WORK/derived.log" 2>&1 || { tail -30 "$WORK/derived.log"; exit 1; }
quiet podman run --rm --entrypoint sh "$DERIVED" -ec 'python -c "import uvloop, httptools"; python -m pip check'
log "derived image with inferd[fast-http]==$INFERD_VERSION: uvloop and httptools import, pip check clean"

podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -e "$IMAGE" -e "$DERIVED" -e "$BASE_IMAGE" | sed "s/^/  /" || true
log "image size: $IMAGE is $((SIZE / 1000000)) MB"
