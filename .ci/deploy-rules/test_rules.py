"""Tests of the deploy rules and of components/sidecar's rendering.

Usage: test_rules.py   with KUBECTL set to a kubectl whose `kustomize` renders (.ci/validate-deploy.sh runs it)

Each rule added for issue 26 is broken here once on purpose and must fail (or warn) with its message; the
sidecar test bed (.ci/deploy-tests/sidecar-kinds) must keep every workload's own pod settings.
"""

import copy
import os
import pathlib
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import k8s  # noqa: E402 (after the path it is found on)
from workloads import pod_template  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BED = ROOT / ".ci" / "deploy-tests" / "sidecar-kinds"
KUBECTL = os.environ.get("KUBECTL", "kubectl")


def render(kustomization_text=None, path=None):
    """Renders a kustomization: a directory, or a throwaway one written inside the repository (kustomize
    loads only relative paths) from its text, where `ROOT/` stands for the repository's root."""
    if path is None:
        with tempfile.TemporaryDirectory(dir=ROOT / "target") as work:
            rel = os.path.relpath(ROOT, work)
            pathlib.Path(work, "kustomization.yaml").write_text(kustomization_text.replace("ROOT/", rel + "/"))
            return render(path=work)
    out = subprocess.run([KUBECTL, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def check(docs):
    """The rules' (problems, warnings) for one bundle."""
    k8s.problems.clear()
    k8s.warnings.clear()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=ROOT / "target") as f:
        yaml.safe_dump_all(docs, f)
        f.flush()
        k8s.check_bundle(f.name)
    return list(k8s.problems), list(k8s.warnings)


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


class SidecarOnEveryKind(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.given = [d for d in yaml.safe_load_all((BED / "workloads.yaml").read_text()) if d]
        cls.rendered = render(path=BED)

    def workloads(self):
        return [d for d in self.given if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]

    def test_every_kind_gets_both_sidecars_first(self):
        self.assertEqual({d["kind"] for d in self.workloads()}, {"Deployment", "StatefulSet", "Job", "CronJob"})
        for given in self.workloads():
            pod = pod_template(find(self.rendered, given["kind"], given["metadata"]["name"]))["spec"]
            names = [c["name"] for c in pod["initContainers"]]
            own = [c["name"] for c in pod_template(given)["spec"].get("initContainers", [])]
            self.assertEqual(names, ["sidecred-agent", "sidecred-forwarder"] + own, given["kind"])
            forwarder = pod["initContainers"][1]
            self.assertEqual(forwarder["startupProbe"]["exec"]["command"],
                             ["/usr/local/bin/sidecred-forwarder", "--probe"], given["kind"])

    def test_every_kind_keeps_its_service_account_fsgroup_and_grace_period(self):
        for given in self.workloads():
            before = pod_template(given)["spec"]
            after = pod_template(find(self.rendered, given["kind"], given["metadata"]["name"]))["spec"]
            for key in ("serviceAccountName", "terminationGracePeriodSeconds", "automountServiceAccountToken",
                        "securityContext"):
                self.assertEqual(after.get(key), before.get(key), f"{given['kind']}: {key}")
            self.assertEqual(after["containers"], before["containers"], f"{given['kind']}: the app's containers")

    def test_the_bed_follows_the_rules_and_warns_of_each_own_grace_period(self):
        problems, warnings = check(self.rendered)
        self.assertEqual(problems, [])
        graces = [w for w in warnings if "keeps its own terminationGracePeriodSeconds" in w]
        self.assertEqual(len(graces), 4, warnings)
        self.assertTrue(any("Job/batch" in w and "automountServiceAccountToken" in w for w in warnings), warnings)

    def test_a_labelled_workload_without_the_sidecars_fails(self):
        problems, _ = check(self.given)
        self.assertEqual(sum("components/sidecar did not patch it" in p for p in problems), 4, problems)

    def test_a_labelled_kind_the_component_does_not_patch_fails(self):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "loose", "labels": {"sidecred.io/sidecar": "true"}},
               "spec": {"containers": [{"name": "app", "image": "x"}]}}
        problems, _ = check(self.rendered + [pod])
        self.assertTrue(any("Pod/loose" in p and "gets no sidecars" in p for p in problems), problems)

    def test_a_labelled_workload_without_fsgroup_or_forwarder_probe_or_grace_fails(self):
        docs = copy.deepcopy(self.rendered)
        pod = pod_template(find(docs, "Job", "batch"))["spec"]
        del pod["securityContext"]["fsGroup"]
        del pod["initContainers"][1]["startupProbe"]
        del pod["terminationGracePeriodSeconds"]
        problems, _ = check(docs)
        self.assertTrue(any("Job/batch" in p and "fsGroup must be set" in p for p in problems), problems)
        self.assertTrue(any("Job/batch" in p and "needs a startupProbe" in p for p in problems), problems)
        self.assertTrue(any("Job/batch" in p and "terminationGracePeriodSeconds 30" in p for p in problems),
                        problems)

    def test_the_role_bound_to_another_account_fails(self):
        docs = [d for d in self.rendered if d["kind"] != "RoleBinding"]
        problems, _ = check(docs)
        self.assertTrue(any("ServiceAccount web lacks" in p for p in problems), problems)


class Combinations(unittest.TestCase):
    def test_persistent_state_with_two_replicas_fails(self):
        docs = render("""resources: [ROOT/k8s/base]
components:
  - ROOT/k8s/components/persistent-state
  - ROOT/k8s/components/write-back-secret
  - ROOT/k8s/components/two-replicas
""")
        problems, _ = check(docs)
        self.assertTrue(any("cannot be combined" in p for p in problems), problems)

    def test_persistent_state_with_write_back_passes(self):
        problems, _ = check(render(path=ROOT / "k8s" / "overlays" / "persistent-state-write-back"))
        self.assertEqual(problems, [])

    def test_monitoring_inside_each_account_fails(self):
        # What an operator gets who lists components/monitoring in each account's kustomization (under its
        # nameSuffix) instead of once above them: renamed copies of the PodMonitors and the PrometheusRule.
        docs = []
        for account in ("alice", "bob"):
            text = (ROOT / "k8s" / "overlays" / "multi-account" / account / "kustomization.yaml").read_text()
            self.assertIn("  - ../../write-back-secret\n", text)
            text = text.replace("  - ../../write-back-secret\n", "  - ROOT/k8s/overlays/write-back-secret\n")
            docs += render(text + "components:\n  - ROOT/k8s/components/monitoring\n")
        self.assertTrue(any(d["kind"] == "PodMonitor" and d["metadata"]["name"] == "sidecred-agent-bob" for d in docs))
        problems, _ = check(docs)
        self.assertTrue(any("would fire twice" in p for p in problems), problems)
        self.assertTrue(any("every alert twice" in p for p in problems), problems)

    def test_monitoring_once_above_the_accounts_passes(self):
        problems, _ = check(render(path=ROOT / "k8s" / "overlays" / "monitoring"))
        self.assertEqual(problems, [])


class Policies(unittest.TestCase):
    def setUp(self):
        self.docs = render(path=ROOT / "k8s" / "overlays" / "monitoring")

    def test_an_ingress_only_policy_passes_but_not_one_with_egress_rules(self):
        metrics = find(self.docs, "NetworkPolicy", "sidecred-metrics")
        self.assertEqual(metrics["spec"]["policyTypes"], ["Ingress"])
        metrics["spec"]["egress"] = [{"ports": [{"port": 8080}]}]
        problems, _ = check(self.docs)
        self.assertTrue(any("sidecred-metrics" in p and "ingress-only" in p for p in problems), problems)

    def test_pods_under_ingress_only_policies_alone_fail(self):
        docs = [d for d in self.docs if not (d["kind"] == "NetworkPolicy" and d["metadata"]["name"] != "sidecred-metrics")]
        problems, _ = check(docs)
        self.assertTrue(any("no NetworkPolicy restricting egress" in p for p in problems), problems)

    def test_a_version_label_that_is_not_the_image_tag_fails(self):
        find(self.docs, "Service", "sidecred-alice")["metadata"]["labels"]["app.kubernetes.io/version"] = "0.0.9"
        problems, _ = check(self.docs)
        self.assertTrue(any("Service/sidecred-alice" in p and "version" in p for p in problems), problems)


if __name__ == "__main__":
    (ROOT / "target").mkdir(exist_ok=True)
    unittest.main(verbosity=2)
