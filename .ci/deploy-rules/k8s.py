"""The project's rules for every rendered kustomize bundle; a regression here is a security or safety regression.

Usage: k8s.py BUNDLE.yaml...   (exits 1 and prints FAIL lines when a rule is broken; WARN lines do not fail)
"""

import sys

import yaml

from budget import (AGENT_LEASE_DURATION, AGENT_REQUEST_TIMEOUT, AGENT_SECRET_WRITE, AGENT_SHUTDOWN_WRITE_WAIT,
                    FORWARDER_DRAIN_TIMEOUT, FORWARDER_SHUTDOWN_DELAY, K8S_TERMINATION_GRACE, seconds, shortfall)
from logins import check_logins, login_of
from monitoring import check_monitoring
from sidecar import SIDECAR_LABEL, check_sidecar_pod, is_sidecar
from workloads import WORKLOAD_KINDS, pod_template, template_labels

ALLOWED_EGRESS_PORTS = {53, 443, 6443}
problems = []
warnings = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


def warn(where, msg):
    warnings.append(f"{where}: {msg}")


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def binary(container):
    return container.get("command", ["?"])[0].rsplit("/", 1)[-1]


def env_value(container, name, default):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value", default)
    return default


def setting(container, flag, env, default):
    """A binary's setting as clap resolves it: the flag, else the environment variable, else the default."""
    args = container.get("command", [])[1:] + container.get("args", [])
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return env_value(container, env, default)


def check_replicas(where, workload, login):
    """One agent per login, unless the agents elect their refresher through a Lease."""
    if login.lease:
        return
    kind, spec = workload["kind"], workload["spec"]
    why = "without a lease (SIDECRED_LEASE) a refresh token must have exactly one holder"
    if kind == "DaemonSet":
        fail(where, f"a DaemonSet runs one agent per node: {why}")
    elif kind in ("Job", "CronJob"):
        fail(where, f"a {kind}'s pods come and go, and a retry or the next run overlaps the last: {why}")
    elif spec.get("replicas") != 1:
        fail(where, f"replicas must be 1: {why}")
    if kind == "Deployment" and spec.get("strategy", {}).get("type") != "Recreate":
        fail(where, "strategy.type must be Recreate without a lease (the old agent must stop before the new one "
                    "starts)")


def check_security(where, pod, containers, sidecar):
    psc = pod.get("securityContext", {})
    # Beside an app, the pod's settings are the app's: check_sidecar_pod holds them to what the agent needs.
    if not sidecar and psc.get("fsGroup") != 65532:
        fail(where, "pod securityContext.fsGroup must be 65532 (the agent reads the Secret, 0440 through that "
                    "group, with it)")
    if not sidecar and pod.get("automountServiceAccountToken") is not False:
        fail(where, "automountServiceAccountToken must be false (only the agent may get an API token)")
    for c in containers:
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        effective = lambda key: sc.get(key, psc.get(key))  # noqa: E731 (the container's value wins)
        if binary(c).startswith("sidecred-"):
            for key in ("runAsUser", "runAsGroup"):
                if effective(key) != 65532:
                    fail(cw, f"{key} must be 65532 (the agent serves its socket to its own uid)")
        if effective("runAsNonRoot") is not True:
            fail(cw, "runAsNonRoot must be true")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(cw, "seccompProfile.type must be RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(cw, "securityContext.readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(cw, "securityContext.allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            fail(cw, "must not be privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            fail(cw, "securityContext.capabilities must drop ALL and add none")
        res = c.get("resources", {})
        if not res.get("limits", {}).get("memory") or not res.get("requests", {}).get("cpu"):
            fail(cw, "needs a memory limit and a CPU request")


def check_shutdown_budget(where, pod, agent, forwarder):
    """The forwarder keeps accepting for its shutdown delay and drains, then the agent (stopped after it)
    finishes a refresh in flight; with a lease it then waits for the shared Secret to hold that refresh's pair
    (the refresh's own wait, then --shutdown-write-wait) before it releases the lease. The grace period covers
    all of it with a margin (budget.py)."""
    leased = setting(agent, "--lease", "SIDECRED_LEASE", None) is not None
    write = 0
    try:
        delay = seconds(setting(forwarder, "--shutdown-delay", "SIDECRED_SHUTDOWN_DELAY", FORWARDER_SHUTDOWN_DELAY))
        drain = seconds(setting(forwarder, "--drain-timeout", "SIDECRED_DRAIN_TIMEOUT", FORWARDER_DRAIN_TIMEOUT))
        refresh = seconds(setting(agent, "--request-timeout", "SIDECRED_REQUEST_TIMEOUT", AGENT_REQUEST_TIMEOUT))
        if leased:
            # Under a lease a refresh ends by the fence, at most a lease duration after the last renewal.
            duration = seconds(setting(agent, "--lease-duration", "SIDECRED_LEASE_DURATION", AGENT_LEASE_DURATION))
            refresh = min(refresh, duration)
            write = AGENT_SECRET_WRITE + seconds(setting(agent, "--shutdown-write-wait", "SIDECRED_SHUTDOWN_WRITE_WAIT",
                                                         AGENT_SHUTDOWN_WRITE_WAIT))
    except ValueError as e:
        fail(where, str(e))
        return
    grace = pod.get("terminationGracePeriodSeconds", K8S_TERMINATION_GRACE)
    lacking = shortfall(grace, delay, drain, refresh, write)
    if lacking:
        wrote = f" plus writing its pair to the shared Secret ({write:g} s)" if leased else ""
        fail(where, f"terminationGracePeriodSeconds {grace} is {lacking:g} s short of the forwarder's shutdown "
                    f"delay ({delay:g} s) and drain ({drain:g} s) plus a refresh in flight ({refresh:g} s){wrote} "
                    f"plus the margin")


def check_state_volume(where, workload, agent, volumes):
    """A state directory on a PersistentVolumeClaim is ReadWriteOnce: one pod, and the old one gone first."""
    state = next((m["name"] for m in agent.get("volumeMounts", []) if m["mountPath"] == "/var/lib/sidecred"), None)
    if state is None or "persistentVolumeClaim" not in volumes.get(state, {}):
        return
    spec = workload["spec"]
    why = ("the state volume is a ReadWriteOnce PersistentVolumeClaim (components/persistent-state), which one "
           "pod at a time can use: components/persistent-state and two-replicas cannot be combined; for several "
           "replicas keep the pair in the Secret alone (write-back-secret)")
    if workload["kind"] not in ("Deployment", "StatefulSet") or spec.get("replicas", 1) != 1:
        fail(where, f"{workload['kind']} with replicas {spec.get('replicas', 1)}: {why}")
    elif workload["kind"] == "Deployment" and spec.get("strategy", {}).get("type") != "Recreate":
        fail(where, f"strategy.type must be Recreate: the new pod cannot start while the old one holds the volume "
                    f"({why})")


def check_workload(where, workload):
    """Checks one workload; returns (its pod labels, its login) when it runs sidecred, else None."""
    spec = workload["spec"]
    pod = pod_template(workload)["spec"]
    labels = template_labels(workload)
    sidecar = is_sidecar(workload)
    # Jobs get their selector from the API server.
    if "selector" in spec and not subset(spec["selector"].get("matchLabels", {}), labels):
        fail(where, "selector.matchLabels does not match the pod template's labels")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secret_volumes = {name for name, v in volumes.items() if "secret" in v}
    for name in secret_volumes:
        if volumes[name]["secret"].get("defaultMode") != 0o400:
            fail(where, f"Secret volume {name}: defaultMode must be 0400 (256)")

    containers = pod.get("initContainers", []) + pod.get("containers", [])
    check_security(where, pod, containers, sidecar)
    for c in containers:
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                fail(f"{where} container {c['name']}", f"mounts undefined volume {m['name']}")
            elif m["name"] in secret_volumes and m.get("readOnly") is not True:
                fail(f"{where} container {c['name']}", f"Secret volume {m['name']} must be mounted readOnly")
    agents = [c for c in containers if binary(c) == "sidecred-agent"]
    forwarders = [c for c in containers if binary(c) == "sidecred-forwarder"]
    if len(agents) != 1 or len(forwarders) != 1:
        hint = (f": it is labelled {SIDECAR_LABEL}=true, but components/sidecar did not patch it (is the component "
                "listed in its kustomization?)") if sidecar else ""
        fail(where, f"needs exactly one sidecred-agent and one sidecred-forwarder container{hint}")
        return None
    agent, forwarder = agents[0], forwarders[0]
    # The forwarder faces the network: it must hold neither the credentials nor an API token.
    credentials = {m["name"] for m in agent.get("volumeMounts", []) if m["mountPath"] == "/etc/sidecred/credentials"}
    if not credentials & secret_volumes:
        fail(where, "the agent must get the credentials Secret at /etc/sidecred/credentials")
    for m in forwarder.get("volumeMounts", []):
        sources = volumes.get(m["name"], {}).get("projected", {}).get("sources", [])
        if m["name"] in credentials or any("serviceAccountToken" in src for src in sources):
            fail(f"{where} container {forwarder['name']}", f"must not mount {m['name']} (credentials or API token)")
    # `status` falls back to reading the credentials file when no agent answers; a probe must ask the agent
    # only, or a valid Secret would pass it while the agent is not serving.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = agent.get(probe, {}).get("exec", {}).get("command")
        if cmd and "status" in cmd and "--source" not in cmd:
            fail(f"{where} container {agent['name']}", f"{probe} must run `sidecred-agent status --source agent`")
    sockets = {c["name"]: env_value(c, "SIDECRED_SOCKET", None) for c in (agent, forwarder)}
    if len(set(sockets.values())) != 1 or None in sockets.values():
        fail(where, f"agent and forwarder must set the same SIDECRED_SOCKET, got {sockets}")
    check_shutdown_budget(where, pod, agent, forwarder)
    check_state_volume(where, workload, agent, volumes)
    if sidecar:
        check_sidecar_pod(where, workload, pod, fail, warn)

    secret_names = {volumes[n]["secret"].get("secretName") for n in credentials & secret_volumes}
    login = login_of(where, workload, agent, secret_names, fail)
    check_replicas(where, workload, login)
    return labels, login


def check_role(where, role):
    allowed = {"secrets": ("", {"get", "watch", "patch"}), "leases": ("coordination.k8s.io", {"get", "update"})}
    for rule in role.get("rules", []):
        resources = rule.get("resources", [])
        if len(resources) != 1 or resources[0] not in allowed or not rule.get("resourceNames"):
            fail(where, "may only name specific Secrets or Leases (one resource per rule, with resourceNames)")
            continue
        group, verbs = allowed[resources[0]]
        if rule.get("apiGroups") != [group]:
            fail(where, f"{resources[0]} are in the API group {group!r} only")
        if not set(rule.get("verbs", [])) <= verbs:
            fail(where, f"verbs {rule.get('verbs')} on {resources[0]} exceed {sorted(verbs)}")


def restricts_egress(np):
    return "Egress" in np["spec"].get("policyTypes", [])


def check_networkpolicy(where, np):
    """A policy restricts egress to the allowed ports, or is ingress-only (policyTypes [Ingress] and no egress
    rules: it only opens a port, like components/monitoring's); each pod must still be under one that restricts
    egress (check_bundle)."""
    spec = np["spec"]
    if not restricts_egress(np):
        if spec.get("policyTypes") != ["Ingress"] or spec.get("egress"):
            fail(where, "must restrict Egress, or be ingress-only (policyTypes: [Ingress], no egress rules)")
        return
    for rule in spec.get("egress", []):
        ports = {p.get("port") for p in rule.get("ports", [])}
        if not ports or not ports <= ALLOWED_EGRESS_PORTS:
            fail(where, f"egress to ports {sorted(map(str, ports)) or 'any'}: only {sorted(ALLOWED_EGRESS_PORTS)}")


def egress_ports(np):
    return {p.get("port") for rule in np["spec"].get("egress", []) for p in rule.get("ports", [])}


def check_bundle(path):
    with open(path) as f:
        text = f.read()
    docs = [d for d in yaml.safe_load_all(text) if d]
    name = path.rsplit("/", 1)[-1]
    where = lambda d: f"{name} {d['kind']}/{d['metadata']['name']}"  # noqa: E731
    workloads = []  # (where, pod labels, login)
    for d in docs:
        kind = d["kind"]
        if is_sidecar(d) and kind not in WORKLOAD_KINDS:
            fail(where(d), f"is labelled {SIDECAR_LABEL}=true, but components/sidecar patches only "
                           f"{', '.join(WORKLOAD_KINDS)}: this {kind} gets no sidecars")
        if kind in WORKLOAD_KINDS:
            checked = check_workload(where(d), d)
            if checked:
                workloads.append((where(d), *checked))
        elif kind == "Role":
            check_role(where(d), d)
        elif kind in ("ClusterRole", "ClusterRoleBinding"):
            fail(where(d), "no cluster-wide RBAC: a Role limited to the one Secret and Lease is enough")
        elif kind == "NetworkPolicy":
            check_networkpolicy(where(d), d)
        elif kind == "Secret":
            fail(where(d), "a kustomization must not ship a Secret (it would overwrite the live credentials)")
    all_templates = [template_labels(d) for d in docs if d["kind"] in WORKLOAD_KINDS]
    for d in docs:
        if d["kind"] == "Service":
            n = sum(subset(d["spec"].get("selector", {}), t) for t in all_templates)
            if n != 1:
                fail(where(d), f"selector matches {n} workloads, must match exactly one")
        if d["kind"] == "PodDisruptionBudget":
            matched = [w for w in docs if w["kind"] in WORKLOAD_KINDS
                       and subset(d["spec"]["selector"].get("matchLabels", {}), template_labels(w))]
            if len(matched) != 1:
                fail(where(d), f"selector matches {len(matched)} workloads, must match exactly one")
            elif d["spec"].get("minAvailable") == 1 and matched[0]["spec"].get("replicas", 1) < 2:
                fail(where(d), "minAvailable 1 on a single replica would block every node drain")
    policies = [np for np in docs if np["kind"] == "NetworkPolicy"]
    for w, labels, login in workloads:
        selecting = [np for np in policies if subset(np["spec"]["podSelector"].get("matchLabels", {}), labels)]
        if not any(restricts_egress(np) for np in selecting):
            fail(w, f"no NetworkPolicy restricting egress selects the pods labelled {labels}")
        elif login.write_back and not any(6443 in egress_ports(np) for np in selecting):
            fail(w, "talks to the API server (the Lease, the Secret) but no NetworkPolicy allows egress to 6443")
    check_logins(name, docs, [(w, login) for w, _, login in workloads], fail)
    check_monitoring(name, docs, fail)
    check_version_labels(name, docs)
    if "sk-ant-" in text:
        fail(name, "contains something shaped like a real Anthropic token (sk-ant-...)")


def check_version_labels(bundle, docs):
    """app.kubernetes.io/version says what runs: the tag of the sidecred image in the same bundle."""
    tags = {c["image"].rsplit(":", 1)[-1] for d in docs if d["kind"] in WORKLOAD_KINDS
            for c in pod_template(d)["spec"].get("initContainers", []) + pod_template(d)["spec"].get("containers", [])
            if binary(c).startswith("sidecred-") and ":" in c.get("image", "")}
    for d in docs:
        for labels in (d["metadata"].get("labels", {}),
                       template_labels(d) if d["kind"] in WORKLOAD_KINDS else {}):
            if labels.get("app.kubernetes.io/part-of") != "sidecred":
                continue
            version = labels.get("app.kubernetes.io/version")
            if not version or (tags and version not in tags):
                fail(f"{bundle} {d['kind']}/{d['metadata']['name']}",
                     f"app.kubernetes.io/version {version!r} must be the sidecred image's tag ({sorted(tags)})")


def main(bundles):
    for bundle in bundles:
        check_bundle(bundle)
    for w in warnings:
        print(f"WARN {w}", file=sys.stderr)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{len(bundles)} rendered bundles follow the rules ({len(warnings)} warnings)")


if __name__ == "__main__":
    main(sys.argv[1:])
