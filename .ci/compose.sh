#!/usr/bin/env bash
# deploy/compose run for real with podman-compose (PyPI, in the venv of .ci/containers.sh), on the images
# .ci/image.sh built (it runs first):
#
#   demo   compose.yaml + compose.demo.yaml, as docs/deploy.md's demo runs it;
#   plain  compose.yaml, its credentials directory holding a login the demo backend issued, and an override
#          of two environment values only: the agent's token URL and the forwarder's upstream, at that backend,
#          which runs beside it on the project's network.
#
# Each: `up -d`; every service's healthcheck passes (`podman healthcheck run`: no systemd here to run
# them on a timer); /readyz through the published port (127.0.0.1 only); a streamed POST /v1/messages;
# `down -v`; and then no container, pod, volume or network of the project is left. Removes everything it
# made even when a check fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source bench/lib.sh
# shellcheck source=.ci/containers.sh
source .ci/containers.sh

COMPOSE_DIR=$ROOT/deploy/compose
HEALTHY_WITHIN=120

# podman-compose, from the compose directory, for project $PROJECT with the files in FILES.
compose() {
    (cd "$COMPOSE_DIR" && "$VENV/bin/podman-compose" -p "$PROJECT" "${FILES[@]/#/--file=}" "$@")
}

# What the project left: containers, pods, volumes, networks (by podman-compose's label or its names).
leftovers() {
    podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format 'container {{.Names}}'
    podman pod ps --filter "name=^pod_$PROJECT\$" --format 'pod {{.Name}}'
    podman volume ls --filter "label=io.podman.compose.project=$PROJECT" --format 'volume {{.Name}}'
    podman network ls --format '{{.Name}}' | awk -v p="${PROJECT}_" 'index($0, p) == 1 { print "network " $0 }'
}

cleanup() {
    local status=$?
    if [[ -n ${PROJECT:-} ]]; then
        if ((status != 0)); then
            local c
            for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
                printf '\n--- podman logs %s (last 40 lines)\n' "$c" >&2
                podman logs --tail 40 "$c" >&2 2>&1 || true
            done
        fi
        compose down -v -t 0 >/dev/null 2>&1 || true
        podman rm -f -t 0 "$PROJECT-stand-in" >/dev/null 2>&1 || true
        podman volume rm -f "$PROJECT-stand-in" >/dev/null 2>&1 || true
        podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}

# The container podman-compose made for SERVICE.
container_of() {
    podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
        --filter "label=io.podman.compose.service=$1" --format '{{.Names}}' | head -n1
}

# Runs every service's healthcheck until it passes, or fails naming the service.
wait_healthy() {
    local service c deadline
    for service in "$@"; do
        c=$(container_of "$service")
        [[ -n $c ]] || die "$PROJECT: no container for the service $service"
        deadline=$((SECONDS + HEALTHY_WITHIN))
        until podman healthcheck run "$c" >/dev/null 2>&1; do
            [[ $(podman inspect --format '{{.State.Running}}' "$c") == true ]] ||
                die "$PROJECT: the $service container stopped before its healthcheck passed"
            ((SECONDS < deadline)) || die "$PROJECT: the $service healthcheck did not pass within ${HEALTHY_WITHIN}s"
            sleep 1
        done
        say "$PROJECT: $service is healthy"
    done
}

wait_ready() {
    local deadline=$((SECONDS + HEALTHY_WITHIN))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' -m 5 "http://127.0.0.1:$PORT/readyz" || true) == 200 ]]; do
        ((SECONDS < deadline)) || die "$PROJECT: GET /readyz on 127.0.0.1:$PORT did not answer 200 within ${HEALTHY_WITHIN}s"
        sleep 0.5
    done
}

# After `down -v` (and removing the stand-in), nothing of the project may be left.
check_nothing_left() {
    local left
    left=$(leftovers)
    [[ -z $left ]] || die "$PROJECT: \`down -v\` left:
$left"
    say "$PROJECT: \`down -v\` left nothing behind"
}

run_demo() {
    PROJECT=sidecred-ci-demo-$$
    FILES=(compose.yaml compose.demo.yaml)
    PORT=$(free_port)
    say "$PROJECT: up (compose.yaml + compose.demo.yaml) on 127.0.0.1:$PORT"
    SIDECRED_PUBLISH=127.0.0.1:$PORT compose up -d --no-build >/dev/null
    wait_healthy demo-backend agent forwarder
    wait_ready
    check_stream "http://127.0.0.1:$PORT" "$WORK/stream.txt"
    compose down -v >/dev/null
    check_nothing_left
}

# The stand-in on the project's network (made here; podman-compose joins a network that exists) under the
# name compose.demo.yaml gives it, and its login as a user's ~/.claude holds it: their own file, 0600.
start_stand_in() {
    podman network create "${PROJECT}_default" >/dev/null
    podman volume create "$PROJECT-stand-in" >/dev/null
    podman run --detach --name "$PROJECT-stand-in" --network "${PROJECT}_default" --network-alias demo-backend \
        --user 65532:65532 --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges \
        --volume "$PROJECT-stand-in:/var/lib/sidecred-demo" "$CI_DEMO_IMAGE" /usr/local/bin/sidecred-demo-backend \
        --token-listen 0.0.0.0:8081 --api-listen 0.0.0.0:8082 --credentials /var/lib/sidecred-demo/.credentials.json \
        >/dev/null
    local login deadline=$((SECONDS + 30))
    login="$(podman volume inspect --format '{{.Mountpoint}}' "$PROJECT-stand-in")/.credentials.json"
    until [[ -s $login ]]; do
        ((SECONDS < deadline)) || die "the demo backend wrote no login within 30s"
        sleep 0.2
    done
    install -d -m 0700 -o 65532 -g 65532 "$WORK/claude"
    install -m 0600 -o 65532 -g 65532 "$login" "$WORK/claude/.credentials.json"
}

run_plain() {
    PROJECT=sidecred-ci-plain-$$
    # Pass-throughs in compose.yaml would not do: podman-compose cannot merge a variable without a value
    # with the demo override's value for it.
    cat >"$WORK/stand-in.yaml" <<'EOF'
services:
  agent:
    environment:
      SIDECRED_TOKEN_URL: http://demo-backend:8081/v1/oauth/token
  forwarder:
    environment:
      SIDECRED_UPSTREAM: http://demo-backend:8082
EOF
    FILES=(compose.yaml "$WORK/stand-in.yaml")
    PORT=$(free_port)
    start_stand_in
    say "$PROJECT: up (compose.yaml; token URL and upstream overridden to the demo backend) on 127.0.0.1:$PORT"
    SIDECRED_PUBLISH=127.0.0.1:$PORT CLAUDE_CONFIG_DIR=$WORK/claude compose up -d --no-build >/dev/null
    wait_healthy agent forwarder
    wait_ready
    check_stream "http://127.0.0.1:$PORT" "$WORK/stream.txt"
    compose down -v >/dev/null
    podman rm -f -t 0 "$PROJECT-stand-in" >/dev/null
    podman volume rm "$PROJECT-stand-in" >/dev/null
    podman network rm "${PROJECT}_default" >/dev/null
    check_nothing_left
}

started=$SECONDS
WORK=$(mktemp -d -t sidecred-compose.XXXXXX)
trap cleanup EXIT
install_engine
configure_engine
install_python_tools
for image in "$CI_IMAGE" "$CI_DEMO_IMAGE"; do
    podman image exists "$image" || die "no image $image: run .ci/image.sh first"
done
export SIDECRED_IMAGE=$CI_IMAGE SIDECRED_DEMO_IMAGE=$CI_DEMO_IMAGE
run_demo
run_plain
PROJECT=
say "compose step: demo and plain file up, healthy, streaming and gone in $((SECONDS - started))s"
