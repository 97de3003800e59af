#!/usr/bin/env bash
# The image, built and run as Kubernetes runs it (CI calls this after the benchmarks' release build):
#
#   1. installs Debian's podman, buildah and runc, with a containers.conf of its own (.ci/containers.sh);
#   2. makes the stand-in for gcr.io/distroless/cc-debian12:nonroot from Debian packages (none can be pulled);
#   3. builds the image and the demo image from the real Dockerfile with the binaries of the release build
#      (BINARIES=prebuilt), one target at a time, and checks the image's size against its budget;
#   4. runs the demo backend, the agent and the forwarder in one pod, the two sidecred containers exactly as
#      k8s/base/deployment.yaml runs them (.ci/pod-args.py: user 65532, read-only root, no capabilities, no
#      privilege escalation, the memory limits, the credentials read-only as a Secret mounts them, a shared
#      socket volume and a writable state volume), with only the token URL, the upstream and the refresh
#      margin pointed at the demo backend;
#   5. checks /livez, /readyz, /health, a streamed POST /v1/messages, a refresh seen through the agent
#      container's `status` and a request with the refreshed token; then SIGTERM to the forwarder
#      (/readyz says 503 while it still accepts) and the agent, each exiting 0 within the pod's
#      terminationGracePeriodSeconds;
#   6. removes the pod, its containers and volumes, even when a check fails.
#
# The forwarder is published on 127.0.0.1 only. Leaves the images (localhost/sidecred:ci and
# localhost/sidecred-demo-backend:ci) for .ci/compose.sh. IMAGE_SIZE_BUDGET_MB overrides the budget (40).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source bench/lib.sh
# shellcheck source=.ci/containers.sh
source .ci/containers.sh

SIZE_BUDGET_MB=${IMAGE_SIZE_BUDGET_MB:-40}
MANIFEST=k8s/base/deployment.yaml
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Every name this run creates carries it, so two runs on one machine do not meet.
RUN_ID=sidecred-ci-$$
POD=$RUN_ID
VOLUMES=("$RUN_ID-socket" "$RUN_ID-state" "$RUN_ID-demo-login")
# Inside the pod (one network namespace, as in Kubernetes): the demo backend's two endpoints.
DEMO_TOKEN=127.0.0.1:8081
DEMO_API=127.0.0.1:8082
AGENT_SOCKET=/run/sidecred/agent/agent.sock
READY_WITHIN=120

timings=()
phase_started=$SECONDS
phase() {
    timings+=("$1 $((SECONDS - phase_started))s")
    phase_started=$SECONDS
}

# The binaries and their trees as the Dockerfile's prebuilt stages take them (see its header).
stage_context() {
    local bin
    for bin in sidecred-agent sidecred-forwarder sidecred-demo-backend; do
        [[ -x $TARGET_DIR/release/$bin ]] || die "no $TARGET_DIR/release/$bin after the release build"
    done
    CONTEXT=$WORK/context
    install -D -m 0755 -t "$CONTEXT/image/usr/local/bin" \
        "$TARGET_DIR/release/sidecred-agent" "$TARGET_DIR/release/sidecred-forwarder"
    install -d -m 1777 "$CONTEXT/image/run/sidecred" "$CONTEXT/image/var/lib/sidecred"
    install -D -m 0755 -t "$CONTEXT/demo/usr/local/bin" "$TARGET_DIR/release/sidecred-demo-backend"
    install -d -m 1777 "$CONTEXT/demo/var/lib/sidecred-demo"
}

# One target per invocation, BINARIES passed explicitly: buildah 1.28 drops a stage it then needs otherwise,
# and hangs building two targets with locked cache mounts at once.
build_images() {
    say "building $CI_IMAGE and $CI_DEMO_IMAGE from the Dockerfile (BINARIES=prebuilt)"
    podman build --quiet --pull=never --build-arg BINARIES=prebuilt --target demo-backend \
        -f "$ROOT/Dockerfile" -t "$CI_DEMO_IMAGE" "$CONTEXT" >/dev/null
    podman build --quiet --pull=never --build-arg BINARIES=prebuilt \
        -f "$ROOT/Dockerfile" -t "$CI_IMAGE" "$CONTEXT" >/dev/null
    IMAGE_MB=$(image_mb "$CI_IMAGE")
    say "$CI_IMAGE: $IMAGE_MB MB uncompressed (budget $SIZE_BUDGET_MB MB; the base is $(image_mb "$BASE_IMAGE") MB)"
    ((IMAGE_MB <= SIZE_BUDGET_MB)) || die "$CI_IMAGE is $IMAGE_MB MB, over its budget of $SIZE_BUDGET_MB MB"
}

teardown() {
    local status=$?
    if ((status != 0)) && podman pod exists "$POD" 2>/dev/null; then
        local c
        for c in demo agent forwarder; do
            podman container exists "$POD-$c" || continue
            printf '\n--- podman logs %s (last 40 lines)\n' "$POD-$c" >&2
            podman logs --tail 40 "$POD-$c" >&2 2>&1 || true
        done
    fi
    podman pod rm --force --time 0 "$POD" >/dev/null 2>&1 || true
    podman volume rm --force "${VOLUMES[@]}" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$status"
}

# podman run with a container's settings from the manifest (see .ci/pod-args.py).
run_as_manifest() {
    local name=$1 args
    shift
    mapfile -d '' -t args < <("$VENV/bin/python" .ci/pod-args.py "$MANIFEST" "$name" "$CI_IMAGE" "$@") ||
        die "cannot translate the $name container of $MANIFEST"
    ((${#args[@]})) || die "cannot translate the $name container of $MANIFEST"
    podman run --detach --pod "$POD" --name "$POD-$name" "${args[@]}" >/dev/null
}

http_status() { curl -s -o /dev/null -w '%{http_code}' -m 5 "http://127.0.0.1:$PORT$1" || true; }
answers() { [[ $(http_status "$1") == "$2" ]]; }
running() { [[ $(podman inspect --format '{{.State.Running}}' "$POD-$1" 2>/dev/null) == true ]]; }

# wait_until WHAT SECONDS CMD...: polls a condition; fails naming it, and says so when a container died.
wait_until() {
    local what=$1 secs=$2 deadline c
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        for c in demo agent forwarder; do
            podman container exists "$POD-$c" && ! running "$c" && die "the $c container stopped while waiting for $what"
        done
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

start_pod() {
    PORT=$(free_port)
    say "starting pod $POD (forwarder on 127.0.0.1:$PORT)"
    podman pod create --name "$POD" --publish "127.0.0.1:$PORT:8000" >/dev/null
    local volume
    for volume in "${VOLUMES[@]}"; do podman volume create "$volume" >/dev/null; done
    # The stand-in for Claude's endpoints, hardened as the Compose demo runs it; its login is the seed.
    podman run --detach --pod "$POD" --name "$POD-demo" --user 65532:65532 --read-only --read-only-tmpfs=false \
        --cap-drop ALL --security-opt no-new-privileges --volume "$RUN_ID-demo-login:/var/lib/sidecred-demo" \
        "$CI_DEMO_IMAGE" /usr/local/bin/sidecred-demo-backend \
        --token-listen "$DEMO_TOKEN" --api-listen "$DEMO_API" --credentials /var/lib/sidecred-demo/.credentials.json \
        >/dev/null
    local login
    login="$(podman volume inspect --format '{{.Mountpoint}}' "$RUN_ID-demo-login")/.credentials.json"
    wait_until "the demo backend's login" 30 test -s "$login"
    # The credentials as the kubelet mounts the Secret: root's file, readable by group 65532 (fsGroup) only.
    install -d -m 0755 "$WORK/credentials"
    install -m 0440 -o 0 -g 65532 "$login" "$WORK/credentials/.credentials.json"
    run_as_manifest agent credentials="$WORK/credentials" socket="$RUN_ID-socket" state="$RUN_ID-state" \
        SIDECRED_TOKEN_URL:="http://$DEMO_TOKEN/v1/oauth/token" SIDECRED_REFRESH_MARGIN:=20s
    # The forwarder starts once the agent serves a token, as the native sidecar's startupProbe makes it.
    wait_until "the agent's status" "$READY_WITHIN" agent_status
    run_as_manifest forwarder socket="$RUN_ID-socket" SIDECRED_UPSTREAM:="http://$DEMO_API"
}

agent_status() {
    podman exec "$POD-agent" /usr/local/bin/sidecred-agent status --socket "$AGENT_SOCKET" --source agent
}

refreshes() {
    agent_status 2>/dev/null | awk '$1 == "refreshes:" { print $2 }'
}
refreshed() { (($(refreshes || echo 0) >= 1)); }

stream_once() { check_stream "http://127.0.0.1:$PORT" "$WORK/stream.txt"; }

check_running_pod() {
    wait_until "GET /livez 200" "$READY_WITHIN" answers /livez 200
    wait_until "GET /readyz 200" "$READY_WITHIN" answers /readyz 200
    local health
    health=$(curl -sS -m 5 "http://127.0.0.1:$PORT/health") || die "GET /health failed"
    [[ $health == *'"authenticated":true'* ]] || die "GET /health does not say authenticated: $health"
    say "/livez, /readyz and /health answer: $health"
    stream_once
    say "waiting for the agent's first refresh (the demo login expires 30 s after start)"
    wait_until "a refresh in the agent container's status" 90 refreshed
    say "the agent container's status counts $(refreshes) refresh(es)"
    stream_once
}

# SIGTERM as the kubelet sends it: the forwarder first, then the agent (a native sidecar stops last). Each
# must exit 0, and both within the grace period.
check_sigterm() {
    local grace started code forwarder_s agent_s delay
    grace=$("$VENV/bin/python" .ci/pod-args.py "$MANIFEST" --grace)
    started=$SECONDS
    podman kill --signal TERM "$POD-forwarder" >/dev/null
    delay=$(podman inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$POD-forwarder" |
        sed -n 's/^SIDECRED_SHUTDOWN_DELAY=//p')
    if [[ -n $delay && $delay != 0s ]]; then
        # The shutdown delay: out of the endpoints, still accepting.
        wait_until "GET /readyz 503 during the forwarder's shutdown delay" 10 answers /readyz 503
        answers /livez 200 || die "the forwarder stopped accepting during its shutdown delay ($delay)"
        say "during the shutdown delay ($delay) /readyz says 503 and connections are still accepted"
    fi
    code=$(timeout "$grace" podman wait "$POD-forwarder") || die "the forwarder did not stop within ${grace}s of SIGTERM"
    forwarder_s=$((SECONDS - started))
    ((code == 0)) || die "the forwarder exited $code on SIGTERM"
    started=$SECONDS
    podman kill --signal TERM "$POD-agent" >/dev/null
    code=$(timeout "$((grace - forwarder_s))" podman wait "$POD-agent") ||
        die "the agent did not stop within the ${grace}s grace period"
    agent_s=$((SECONDS - started))
    ((code == 0)) || die "the agent exited $code on SIGTERM"
    say "SIGTERM: the forwarder stopped in ${forwarder_s}s, then the agent in ${agent_s}s (grace ${grace}s)"
}

started=$SECONDS
WORK=$(mktemp -d -t sidecred-image.XXXXXX)
trap teardown EXIT
install_engine
configure_engine
install_python_tools
phase "engine"
make_base
phase "base"
build_release
phase "release build"
stage_context
build_images
phase "images"
start_pod
check_running_pod
check_sigterm
phase "run"
say "image step: ${timings[*]}; $((SECONDS - started))s in all; image $IMAGE_MB MB"
