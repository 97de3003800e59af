"""Per-login names: the Secret, the Lease and the RBAC that grants them must agree in every bundle.

A login is named in up to six places that kustomize does not keep in step (a nameSuffix renames objects,
not strings or resourceNames): the credentials volume's secretName, SIDECRED_WRITE_BACK_SECRET, SIDECRED_LEASE,
the Lease object, and the Role's resourceNames for each. One that disagrees is found only in production: the
agent writes back to a Secret its pods do not mount (the next pod starts from a spent pair), or is refused
the Lease and never refreshes.
"""

import re
from collections import namedtuple

from workloads import pod_template

Login = namedtuple("Login", "lease write_back service_account")

_REFERENCE = re.compile(r"\$\((\w+)\)")


def _settings(agent, where, fail):
    """The agent's settings from its env (in order, with $(VAR) expansion checked) and its arguments."""
    found, defined = {}, {}
    for e in agent.get("env", []):
        value = e.get("value")
        if value is not None:
            for var in _REFERENCE.findall(value):
                if var not in defined:
                    fail(where, f"$({var}) in {e['name']} does not expand: {var} must be defined above it")
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        defined[e["name"]] = field or value
        found[e["name"]] = value
    args = agent.get("command", [])[1:] + agent.get("args", [])
    for flag, env in (("--lease", "SIDECRED_LEASE"), ("--write-back-secret", "SIDECRED_WRITE_BACK_SECRET"),
                      ("--lease-holder", "SIDECRED_LEASE_HOLDER")):
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                found[env] = args[i + 1]
            elif arg.startswith(flag + "="):
                found[env] = arg.split("=", 1)[1]
    return found, defined


def _object_name(where, setting, value, defined, fail):
    """NAME from NAMESPACE/NAME, where NAMESPACE is the pod's own."""
    if value is None:
        return None
    namespace, _, name = value.partition("/")
    if not name:
        fail(where, f"{setting} must be NAMESPACE/NAME, got {value!r}")
        return None
    if namespace == "$(POD_NAMESPACE)" and defined.get("POD_NAMESPACE") != "metadata.namespace":
        fail(where, "POD_NAMESPACE must come from the downward API (fieldRef metadata.namespace)")
    return name


def login_of(where, workload, agent, secret_names, fail):
    pod = pod_template(workload)["spec"]
    settings, defined = _settings(agent, where, fail)
    lease = _object_name(where, "SIDECRED_LEASE", settings.get("SIDECRED_LEASE"), defined, fail)
    write_back = _object_name(where, "SIDECRED_WRITE_BACK_SECRET", settings.get("SIDECRED_WRITE_BACK_SECRET"),
                              defined, fail)
    if lease and not write_back:
        fail(where, "a lease needs SIDECRED_WRITE_BACK_SECRET: the Secret is where followers get each new pair")
    if write_back and write_back not in secret_names:
        fail(where, f"the agent writes back to Secret {write_back} but mounts {sorted(secret_names)}: a new pod "
                    "would start from a spent pair")
    if lease:
        holder = settings.get("SIDECRED_LEASE_HOLDER")
        unique = ("$(POD_NAME)" in holder) if holder else True
        if not unique or defined.get("POD_NAME") != "metadata.name":
            fail(where, "the lease holder must be unique per pod: POD_NAME from fieldRef metadata.name")
        # Pod names are reused (a StatefulSet's db-0 after a force delete); the UID makes the identity
        # unique per pod incarnation, so an old and a new db-0 never both hold the lease.
        if defined.get("POD_UID") != "metadata.uid":
            fail(where, "an agent with a lease needs POD_UID from fieldRef metadata.uid (the holder identity is "
                        "the pod's name and UID)")
        if pod.get("hostNetwork"):
            fail(where, "hostNetwork pods share the node's hostname: no unique lease holder")
    if write_back:
        mounts = {m["name"]: m["mountPath"] for m in agent.get("volumeMounts", [])}
        tokens = [v["name"] for v in pod.get("volumes", [])
                  if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))]
        if not any(mounts.get(t) == "/var/run/secrets/kubernetes.io/serviceaccount" for t in tokens):
            fail(where, "the agent needs an API token (a projected serviceAccountToken at the standard path)")
        if not pod.get("serviceAccountName"):
            fail(where, "needs a serviceAccountName: the default account must not get the Role")
    return Login(lease, write_back, pod.get("serviceAccountName", "default"))


def _grants(docs, fail, bundle):
    """{service account: {(resource, name): verbs}} from the bundle's Roles and RoleBindings."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    bound = set()
    grants = {}
    for b in (d for d in docs if d["kind"] == "RoleBinding"):
        role = roles.get(b["roleRef"]["name"]) if b["roleRef"]["kind"] == "Role" else None
        if role is None:
            fail(f"{bundle} RoleBinding/{b['metadata']['name']}", "binds a Role that is not in the bundle")
            continue
        bound.add(role["metadata"]["name"])
        for s in b.get("subjects", []):
            if s.get("kind") != "ServiceAccount":
                fail(f"{bundle} RoleBinding/{b['metadata']['name']}", "may bind ServiceAccounts only")
                continue
            account = grants.setdefault(s["name"], {})
            for rule in role.get("rules", []):
                for resource in rule.get("resources", []):
                    for name in rule.get("resourceNames", []):
                        account.setdefault((resource, name), set()).update(rule.get("verbs", []))
    for name in roles.keys() - bound:
        fail(f"{bundle} Role/{name}", "is bound to nothing")
    return grants


def check_logins(bundle, docs, workloads, fail):
    """Both ways: each login's names are granted and shipped; each grant and Lease belongs to a login."""
    grants = _grants(docs, fail, bundle)
    leases = {d["metadata"]["name"] for d in docs if d["kind"] == "Lease"}
    used = {}  # service account -> {(resource, name)}
    pairs = {}  # lease -> Secret: one election per login
    for where, login in workloads:
        account = grants.get(login.service_account, {})
        needs = []
        if login.write_back:
            needs.append(("secrets", login.write_back, {"get", "patch"} | ({"watch"} if login.lease else set())))
        if login.lease:
            needs.append(("leases", login.lease, {"get", "update"}))
            if login.lease not in leases:
                fail(where, f"Lease {login.lease} is not in the bundle (the agent may not create it)")
            if pairs.setdefault(login.lease, login.write_back) != login.write_back:
                fail(where, f"Lease {login.lease} elects for two Secrets: {pairs[login.lease]} and {login.write_back}")
        for resource, name, verbs in needs:
            used.setdefault(login.service_account, set()).add((resource, name))
            missing = verbs - account.get((resource, name), set())
            if missing:
                fail(where, f"ServiceAccount {login.service_account} lacks {sorted(missing)} on {resource}/{name}")
    for account, granted in grants.items():
        for resource, name in granted.keys() - used.get(account, set()):
            fail(f"{bundle} ServiceAccount/{account}", f"is granted {resource}/{name}, which no agent of it uses")
    for name in leases - pairs.keys():
        fail(f"{bundle} Lease/{name}", "no agent takes part in this election (SIDECRED_LEASE names another)")
