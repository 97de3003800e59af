"""Translates how a Kubernetes manifest runs one container into `podman run` arguments, so that CI runs the
image exactly as the manifests do (.ci/image.sh): the user and group, a read-only root, the capabilities
dropped, no privilege escalation, the memory limit, the environment, the command and the volume mounts.

Usage: pod-args.py MANIFEST CONTAINER IMAGE [VOLUME=SOURCE | ENV_NAME:=VALUE]...
  VOLUME=SOURCE   what stands in for the pod volume VOLUME (a podman named volume or a host directory)
  ENV_NAME:=VALUE sets or replaces one environment variable (the demo's token URL and upstream)
Prints the arguments after `podman run`, NUL-separated: options, the image, the command. Exits 1 naming what
it cannot translate (a setting podman would silently run differently is a wrong test, not a detail).
`pod-args.py MANIFEST --grace` prints the pod's terminationGracePeriodSeconds.
"""

import sys

import yaml

K8S_TERMINATION_GRACE = 30  # the default when the manifest sets none


def die(msg):
    print(f"pod-args.py: {msg}", file=sys.stderr)
    sys.exit(1)


def pod_spec(path):
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            return doc["spec"]["template"]["spec"]
    die(f"{path}: no Deployment, StatefulSet or DaemonSet")


def memory_bytes(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    if text.isdigit():
        return int(text)
    die(f"cannot read the memory quantity {text!r} (use Ki, Mi or Gi)")


def security_args(pod, container):
    args = []
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    user = csc.get("runAsUser", psc.get("runAsUser"))
    group = csc.get("runAsGroup", psc.get("runAsGroup"))
    if user is None:
        die(f"container {container['name']}: no runAsUser (the image's user would run, not the manifest's)")
    args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    # The kubelet adds fsGroup to the container's supplementary groups.
    if "fsGroup" in psc:
        args += ["--group-add", str(psc["fsGroup"])]
    if csc.get("readOnlyRootFilesystem"):
        # podman would add tmpfs mounts at /tmp, /run and /var/tmp to a read-only root; the kubelet does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in csc.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if csc.get("privileged"):
        die(f"container {container['name']}: privileged")
    return args


def run_args(path, name, image, extras):
    pod = pod_spec(path)
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    found = [c for c in containers if c["name"] == name]
    if len(found) != 1:
        die(f"{path}: no single container named {name!r} (have {[c['name'] for c in containers]})")
    container = found[0]
    sources, env_overrides = {}, {}
    for extra in extras:
        if ":=" in extra:
            key, value = extra.split(":=", 1)
            env_overrides[key] = value
        elif "=" in extra:
            key, value = extra.split("=", 1)
            sources[key] = value
        else:
            die(f"cannot read {extra!r}: VOLUME=SOURCE or ENV_NAME:=VALUE")

    args = security_args(pod, container)
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        args += ["--memory", str(memory_bytes(str(limit)))]
    env = {}
    for e in container.get("env", []):
        if "value" not in e:
            if e["name"] in env_overrides:
                continue
            die(f"container {name}: env {e['name']} has no plain value (valueFrom): give it as {e['name']}:=VALUE")
        env[e["name"]] = str(e["value"])
    env.update(env_overrides)
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    for mount in container.get("volumeMounts", []):
        source = sources.get(mount["name"])
        if source is None:
            die(f"container {name}: nothing given for the volume {mount['name']} (pass {mount['name']}=SOURCE)")
        if "subPath" in mount:
            die(f"container {name}: volume {mount['name']} uses subPath, which this does not translate")
        args += ["--volume", f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
    command = container.get("command", []) + container.get("args", [])
    return args + [image] + [str(c) for c in command]


if len(sys.argv) == 3 and sys.argv[2] == "--grace":
    print(pod_spec(sys.argv[1]).get("terminationGracePeriodSeconds", K8S_TERMINATION_GRACE))
elif len(sys.argv) >= 4:
    sys.stdout.write("\0".join(run_args(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])) + "\0")
else:
    die("usage: pod-args.py MANIFEST CONTAINER IMAGE [VOLUME=SOURCE | ENV_NAME:=VALUE]... | MANIFEST --grace")
