#!/usr/bin/env bash
# Checks k8s/components/monitoring as k8s/overlays/monitoring renders it (two accounts under one copy of the
# component): takes the rules out of the rendered PrometheusRule and runs `promtool check rules` and
# `promtool test rules` on them with every *.test.yaml beside the component, so what the Operator gets is what
# is tested. The plain rules file beside it (for Prometheus without the Operator; the Helm chart ships it too)
# must hold the same groups. Also checks what keeps the alerts right when objects are renamed or there are
# several accounts: one PrometheusRule, one PodMonitor per container, each endpoint labelling its targets
# `sidecred` and `account`, and every sidecred Deployment serving the port its PodMonitor scrapes.
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

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$KUBECTL" kustomize "$ROOT/k8s/overlays/monitoring" >"$WORK/rendered.yaml"

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
if len(rules) != 1:
    fail(f"{len(rules)} PrometheusRules: each alert would fire once per copy; list components/monitoring once")
spec = rules[0].get("spec") or fail("the PrometheusRule has no spec")
plain = yaml.safe_load(open(plain_path))
if spec != plain:
    fail("k8s/components/monitoring: prometheusrule.yaml and sidecred.rules.yaml hold different rules; edit both")
deployments = by_kind.get("Deployment") or fail("the rendered overlay has no Deployment")
if len(deployments) < 2:
    fail("k8s/overlays/monitoring must render several accounts (it is where renaming is checked)")
scraped = {}
for m in monitors:
    for ep in m["spec"]["podMetricsEndpoints"]:
        key = ep["port"]
        if key in scraped:
            fail(f"PodMonitors {scraped[key]} and {m['metadata']['name']} both scrape port {key}: every alert fires twice")
        scraped[key] = m["metadata"]["name"]
        targets = {r.get("targetLabel"): r for r in ep.get("relabelings", [])}
        if "sidecred" not in targets or "account" not in targets:
            fail(f"PodMonitor {m['metadata']['name']} port {key}: its targets must get the labels `sidecred` and "
                 "`account` (relabelings), which the alerts match on instead of the job's name")
for deployment in deployments:
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    ports = {p.get("name") for c in containers for p in c.get("ports", [])}
    for port, monitor in scraped.items():
        if port not in ports:
            fail(f"PodMonitor {monitor} scrapes port {port}, which no container of Deployment {name} declares")
    agent = next(c for c in pod["initContainers"] if c["name"] == "agent")
    if not any(e["name"] == "SIDECRED_METRICS_LISTEN" for e in agent.get("env", [])):
        fail(f"Deployment {name}: the component does not turn on the agent's metrics (SIDECRED_METRICS_LISTEN)")
yaml.safe_dump(spec, open(out_path, "w"), sort_keys=False)
print(f"rendered: {len(deployments)} Deployments, {len(rules)} PrometheusRule, {len(monitors)} PodMonitors; "
      "rules agree with sidecred.rules.yaml")
PY

cp "$COMPONENT"/*.test.yaml "$WORK/"
tests=()
for t in "$WORK"/*.test.yaml; do tests+=("$(basename "$t")"); done
(cd "$WORK" && promtool check rules sidecred.rules.yaml && promtool test rules "${tests[@]}")
echo "check-monitoring: ok"
