"""Validates the Prometheus Operator's objects (PodMonitor, PrometheusRule), which kubernetes-validate has no
schemas for, against models generated from the Operator's CRDs (cloudcoil-models-prometheus-operator), as
strictly as kubernetes-validate --strict: wrong types and unknown fields both fail.

The models accept unknown fields and drop them; a field the model dropped on the way back (validate, then
dump what was set) is one the CRD does not know.

Usage: operator_schemas.py BUNDLE.yaml...   (exits 1 and prints FAIL lines; the kinds it checks on stdout)
"""

import sys

import yaml
from cloudcoil.models.prometheus_operator import v1

API_VERSION = "monitoring.coreos.com/v1"
KINDS = ("PodMonitor", "PrometheusRule")


def unknown_fields(given, kept, path=""):
    """The paths in `given` that are missing from `kept`."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "/"]
        out = []
        for key, value in given.items():
            out += [f"{path}/{key}"] if key not in kept else unknown_fields(value, kept[key], f"{path}/{key}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in unknown_fields(g, k, f"{path}/{i}")]
    return []


def check(path, problems):
    checked = 0
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("apiVersion") != API_VERSION:
            continue
        where = f"{path.rsplit('/', 1)[-1]} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") not in KINDS:
            problems.append(f"{where}: no schema for this kind here (only {', '.join(KINDS)})")
            continue
        try:
            model = getattr(v1, doc["kind"]).model_validate(doc)
        except Exception as e:  # pydantic's ValidationError lists every field at fault
            problems.append(f"{where}: {e}")
            continue
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        for field in unknown_fields(doc, kept):
            problems.append(f"{where}: unknown field {field} (not in the {doc['kind']} CRD)")
        checked += 1
    return checked


def main(paths):
    problems = []
    checked = sum(check(p, problems) for p in paths)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{checked} Prometheus Operator objects passed")


if __name__ == "__main__":
    main(sys.argv[1:])
