"""Rules for a workload that components/sidecar joined: the pod's own settings stay the app's, so instead of
setting them the rules hold them to what the agent needs, and warn where only the operator can tell.
"""

from workloads import pod_template

SIDECAR_LABEL = "sidecred.io/sidecar"
# Set by components/sidecar-pod-defaults on the pods whose settings it chose.
POD_DEFAULTS_ANNOTATION = "sidecred.io/pod-defaults"


def is_sidecar(obj):
    return obj.get("metadata", {}).get("labels", {}).get(SIDECAR_LABEL) == "true"


def check_sidecar_pod(where, workload, pod, fail, warn):
    if pod.get("securityContext", {}).get("fsGroup") is None:
        fail(where, "pod securityContext.fsGroup must be set (any group): the agent reads the root-owned "
                    "credentials Secret through it; for an app without one, add components/sidecar-pod-defaults "
                    "(65532)")
    forwarder = next((c for c in pod.get("initContainers", []) if c["name"] == "sidecred-forwarder"), {})
    if "startupProbe" not in forwarder:
        fail(where, "the sidecred-forwarder sidecar needs a startupProbe, or the app may start before "
                    "127.0.0.1:8000 listens")
    annotations = pod_template(workload).get("metadata", {}).get("annotations", {})
    if annotations.get(POD_DEFAULTS_ANNOTATION) == "true":
        return
    grace = pod.get("terminationGracePeriodSeconds")
    if grace is not None:
        warn(where, f"keeps its own terminationGracePeriodSeconds ({grace}): the sidecars stop after the app, "
                    "in what the app leaves of it, so it must cover the app's own shutdown plus 75 s")
    if pod.get("automountServiceAccountToken") is not False:
        warn(where, "the app's containers get the pod's API token, which the login's Role lets patch the "
                    "credentials Secret: set automountServiceAccountToken false unless the app needs the API "
                    "(the agent mounts a token of its own)")
