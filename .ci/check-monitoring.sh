#!/usr/bin/env bash
# Checks k8s/components/monitoring: renders the base with the component (kustomize), takes the rules out
# of the rendered PrometheusRule, and runs `promtool check rules` and `promtool test rules` on them with
# the component's unit tests, so what the Operator gets is what is tested. The plain rules file beside it
# (for Prometheus without the Operator) must hold the same groups. Also checks that the component turns on
# the agent's metrics port that its PodMonitor scrapes.
#
# Needs promtool (scripts/install-prometheus.sh installs Debian's prometheus package), python3 with PyYAML
# (python3-yaml, which yamllint depends on) and kubectl's kustomize (.ci/validate-deploy.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMPONENT=$ROOT/k8s/components/monitoring
TOOLS=${VALIDATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/deploy-tools}

die() { printf 'check-monitoring: %s\n' "$*" >&2; exit 1; }

"$ROOT/scripts/install-prometheus.sh"
command -v promtool >/dev/null || die "promtool is missing (apt-get install prometheus)"
python3 -c 'import yaml' 2>/dev/null || die "python3 has no yaml module (apt-get install python3-yaml)"
KUBECTL=$TOOLS/venv/bin/kubectl
[[ -x "$KUBECTL" ]] || KUBECTL=$(command -v kubectl) ||
    die "no kubectl to render the component with (.ci/validate-deploy.sh installs one)"

# Inside the repository (target/ is ignored by git): kustomize takes only relative paths.
mkdir -p "$ROOT/target"
WORK=$(mktemp -d "$ROOT/target/check-monitoring.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A throwaway overlay: the base with the component, as an operator would combine them.
mkdir -p "$WORK/overlay"
cat >"$WORK/overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../k8s/base
components:
  - ../../../k8s/components/monitoring
YAML
"$KUBECTL" kustomize "$WORK/overlay" >"$WORK/rendered.yaml"

python3 - "$WORK/rendered.yaml" "$COMPONENT/sidecred.rules.yaml" "$WORK/sidecred.rules.yaml" <<'PY'
import sys, yaml
rendered, plain_path, out_path = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
def fail(msg):
    sys.exit(f"check-monitoring: {msg}")
rules = by_kind.get("PrometheusRule") or fail("the rendered component has no PrometheusRule")
monitors = by_kind.get("PodMonitor") or fail("the rendered component has no PodMonitor")
for obj in rules + monitors:
    if obj.get("apiVersion") != "monitoring.coreos.com/v1" or not obj.get("metadata", {}).get("name"):
        fail(f"{obj['kind']} must be monitoring.coreos.com/v1 with a name: {obj.get('metadata')}")
spec = rules[0].get("spec") or fail("the PrometheusRule has no spec")
plain = yaml.safe_load(open(plain_path))
if spec != plain:
    fail("k8s/components/monitoring: prometheusrule.yaml and sidecred.rules.yaml hold different rules; edit both")
# The ports the PodMonitors scrape must exist on the pod.
(deployment,) = by_kind["Deployment"]
pod = deployment["spec"]["template"]["spec"]
containers = pod.get("containers", []) + pod.get("initContainers", [])
ports = {p.get("name") for c in containers for p in c.get("ports", [])}
for m in monitors:
    for ep in m["spec"]["podMetricsEndpoints"]:
        if ep["port"] not in ports:
            fail(f"PodMonitor {m['metadata']['name']} scrapes port {ep['port']}, which no container declares")
agent = next(c for c in pod["initContainers"] if c["name"] == "agent")
if not any(e["name"] == "SIDECRED_METRICS_LISTEN" for e in agent.get("env", [])):
    fail("the component does not turn on the agent's metrics (SIDECRED_METRICS_LISTEN)")
yaml.safe_dump(spec, open(out_path, "w"), sort_keys=False)
print(f"rendered: {len(rules)} PrometheusRule, {len(monitors)} PodMonitor; rules agree with sidecred.rules.yaml")
PY

cp "$COMPONENT/sidecred.rules.test.yaml" "$WORK/"
(cd "$WORK" && promtool check rules sidecred.rules.yaml && promtool test rules sidecred.rules.test.yaml)
echo "check-monitoring: ok"
