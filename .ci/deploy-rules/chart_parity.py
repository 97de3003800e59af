"""The Helm chart and the kustomize overlay it mirrors render the same objects, except where they should not.

Usage: chart_parity.py CHART.yaml KUSTOMIZE.yaml   (exits 1 and prints what differs)

Both are parsed and normalised, then compared object by object (kind and name) and field by field. What may
differ, and why:
- the labels only Helm sets: helm.sh/chart and app.kubernetes.io/managed-by (Helm's bookkeeping), and
  app.kubernetes.io/instance (the release name; the chart puts it in its selectors too, so two releases in one
  namespace never share pods, where kustomize has one Deployment per name);
- the annotation helm.sh/resource-policy: keep on the state PVC (an uninstall keeps the volume, which may hold
  the only live refresh token; kubectl delete -k has no such switch);
- the order of env entries (kustomize merges a component's entries in front; the order matters only for $(VAR)
  references, which logins.py checks in both) and of other lists of named entries (volumes, mounts, ports);
Everything else (images, probes, security contexts, resources, RBAC rules, budgets, policies) must be equal.
"""

import sys

import yaml

HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}
HELM_ONLY_ANNOTATIONS = {"helm.sh/resource-policy"}


def normalise(value, key=""):
    if isinstance(value, dict):
        drop = HELM_ONLY_LABELS | (HELM_ONLY_ANNOTATIONS if key == "annotations" else set())
        out = {k: normalise(v, k) for k, v in value.items() if k not in drop}
        # An object left with no annotations at all is the same as one without the key.
        return {k: v for k, v in out.items() if not (k == "annotations" and v == {})}
    if isinstance(value, list):
        items = [normalise(v) for v in value]
        if key == "env":
            return {e["name"]: e for e in items}
        if items and all(isinstance(v, dict) and "name" in v for v in items):
            return sorted(items, key=lambda v: v["name"])
        return items
    return value


def differences(chart, kustomize, path=""):
    if isinstance(chart, dict) and isinstance(kustomize, dict):
        out = []
        for k in sorted(chart.keys() | kustomize.keys()):
            here = f"{path}/{k}"
            if k not in kustomize:
                out.append(f"{here}: only in the chart")
            elif k not in chart:
                out.append(f"{here}: only in kustomize")
            else:
                out += differences(chart[k], kustomize[k], here)
        return out
    if isinstance(chart, list) and isinstance(kustomize, list) and len(chart) == len(kustomize):
        return [d for i, (c, k) in enumerate(zip(chart, kustomize)) for d in differences(c, k, f"{path}/{i}")]
    if chart != kustomize:
        return [f"{path}: chart {chart!r}, kustomize {kustomize!r}"]
    return []


def objects(path):
    return {(d["kind"], d["metadata"]["name"]): normalise(d) for d in yaml.safe_load_all(open(path)) if d}


def main(chart_path, kustomize_path):
    chart, kustomize = objects(chart_path), objects(kustomize_path)
    problems = [f"{k}/{n}: only in the chart" for k, n in sorted(chart.keys() - kustomize.keys())]
    problems += [f"{k}/{n}: only in kustomize" for k, n in sorted(kustomize.keys() - chart.keys())]
    for kind, name in sorted(chart.keys() & kustomize.keys()):
        problems += [f"{kind}/{name}{d}" for d in differences(chart[(kind, name)], kustomize[(kind, name)])]
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if problems:
        sys.exit(f"chart_parity: {chart_path} and {kustomize_path} differ where they should agree")
    print(f"{len(chart)} objects agree")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
