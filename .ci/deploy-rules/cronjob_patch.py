"""Writes or checks k8s/components/sidecar/cronjob-patch.yaml: sidecar-patch.yaml's pod template, one level down.

A strategic merge patch has the shape of its target, and a CronJob's pod template sits under
spec.jobTemplate.spec.template instead of spec.template: so the component needs a second patch with the same
containers and volumes. It is generated, not written by hand, so the two cannot drift.

Usage: cronjob_patch.py --write | --check   (--check exits 1 when the file is not what --write would write)
"""

import pathlib
import sys

import yaml

COMPONENT = pathlib.Path(__file__).resolve().parents[2] / "k8s" / "components" / "sidecar"
SOURCE = COMPONENT / "sidecar-patch.yaml"
TARGET = COMPONENT / "cronjob-patch.yaml"
HEADER = """\
# GENERATED from sidecar-patch.yaml by .ci/deploy-rules/cronjob_patch.py --write: edit that file, not this one
# (.ci/validate-deploy.sh fails when they disagree). The same containers and volumes for a labelled CronJob,
# whose pod template sits under spec.jobTemplate.spec.template; sidecar-patch.yaml's comments explain them.
"""


class _Dumper(yaml.SafeDumper):
    """Sequences indented under their key, as yamllint (and the hand-written files) want them."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def render():
    source = yaml.safe_load(SOURCE.read_text())
    patch = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "labelled-cronjob"},
        "spec": {"jobTemplate": {"spec": {"template": source["spec"]["template"]}}},
    }
    return HEADER + yaml.dump(patch, Dumper=_Dumper, sort_keys=False, width=110, default_flow_style=False)


def main(mode):
    text = render()
    if mode == "--write":
        TARGET.write_text(text)
    elif mode == "--check":
        if not TARGET.exists() or TARGET.read_text() != text:
            sys.exit(f"{TARGET} is not what {SOURCE.name} generates: run .ci/deploy-rules/cronjob_patch.py --write")
        print(f"{TARGET.name} agrees with {SOURCE.name}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) == 2 else "")
