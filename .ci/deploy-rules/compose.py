"""The project's rules for the configuration `docker-compose config` renders.

Usage: compose.py RENDERED.yaml LABEL   (LABEL `demo` adds the demo's rules; exits 1 on a broken rule)
"""

import sys

import yaml

from budget import (AGENT_REQUEST_TIMEOUT, COMPOSE_STOP_GRACE, FORWARDER_DRAIN_TIMEOUT, FORWARDER_SHUTDOWN_DELAY,
                    seconds, shortfall)

services = yaml.safe_load(open(sys.argv[1]))["services"]
demo = sys.argv[2] == "demo"
problems = []


def mounts(s):
    """(source, target, read_only) of each volume of service s, in either of Compose's two forms."""
    for v in s.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            yield parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            yield v.get("source"), v.get("target"), bool(v.get("read_only"))


for name, s in services.items():
    if s.get("read_only") is not True:
        problems.append(f"service {name}: read_only must be true")
    if "ALL" not in s.get("cap_drop", []):
        problems.append(f"service {name}: cap_drop must contain ALL")
    if s.get("restart") != "unless-stopped":
        problems.append(f"service {name}: restart must be unless-stopped")
    if "healthcheck" not in s:
        problems.append(f"service {name}: needs a healthcheck")
    for source, target, read_only in mounts(s):
        if target == "/etc/sidecred/credentials" and not read_only:
            problems.append(f"service {name}: the credentials directory must be mounted :ro")



def check_shutdown_budget():
    """`docker compose down` stops the forwarder first (it depends on the agent), then the agent: each gets its
    own stop_grace_period. The forwarder's covers its shutdown delay and its drain; the agent's a refresh in
    flight (budget.py)."""
    for name, keys in (("forwarder", (("SIDECRED_SHUTDOWN_DELAY", FORWARDER_SHUTDOWN_DELAY),
                                      ("SIDECRED_DRAIN_TIMEOUT", FORWARDER_DRAIN_TIMEOUT))),
                       ("agent", (("SIDECRED_REQUEST_TIMEOUT", AGENT_REQUEST_TIMEOUT),))):
        service = services.get(name)
        if service is None:
            problems.append(f"no {name} service")
            continue
        if name == "forwarder" and "agent" not in (service.get("depends_on") or {}):
            problems.append("service forwarder: must depend on agent, so the agent is stopped after it")
        env = service.get("environment") or {}
        try:
            steps = [seconds(env.get(key) or default) for key, default in keys]
            grace = seconds(service.get("stop_grace_period", COMPOSE_STOP_GRACE))
        except ValueError as e:
            problems.append(f"service {name}: {e}")
            continue
        lacking = shortfall(grace, *steps)
        if lacking:
            what = " plus ".join(f"{key} ({step:g} s)" for (key, _), step in zip(keys, steps))
            problems.append(f"service {name}: stop_grace_period {grace:g} s is {lacking:g} s short of {what} "
                            f"plus the margin")


check_shutdown_budget()

# The demo runs against its stand-in only: a token endpoint, an upstream or a login from anywhere else would
# spend a real account's refresh token or send requests to Claude.
if demo:
    stand_in = services.get("demo-backend")
    if stand_in is None:
        problems.append("demo: no demo-backend service")
    else:
        env = lambda name: (services.get(name, {}).get("environment") or {})
        for service, key in (("agent", "SIDECRED_TOKEN_URL"), ("forwarder", "SIDECRED_UPSTREAM")):
            if not str(env(service).get(key, "")).startswith("http://demo-backend:"):
                problems.append(f"demo: {service}'s {key} must point at demo-backend, got {env(service).get(key)!r}")
        logins = {source for source, _, _ in mounts(stand_in)}
        agent_mounts = {target: source for source, target, _ in mounts(services.get("agent", {}))}
        if agent_mounts.get("/etc/sidecred/credentials") not in logins:
            problems.append("demo: the agent's credentials must be the login demo-backend writes, not a real one")
        if agent_mounts.get("/var/lib/sidecred") == "state":
            problems.append("demo: the agent must not keep its state in the real setup's `state` volume")
for p in problems:
    print(f"FAIL {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
