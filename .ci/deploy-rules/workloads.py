"""Where a workload of each kind keeps its pod: the one place the rules look it up."""

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


def pod_template(workload):
    """The pod template: a CronJob's is one level further down, under its Job template."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def template_labels(workload):
    return pod_template(workload).get("metadata", {}).get("labels", {})
