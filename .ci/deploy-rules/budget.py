"""The shutdown budget: the binaries' defaults, written once, and the arithmetic both rule sets check.

A pod or container stopped before a refresh in flight has saved its pair may take the only live refresh token
with it, and the login is lost. So the grace period must cover what runs before that refresh can finish.
"""

import re

# The binaries' defaults, for a manifest that does not set the value (agent/src/cmd/args.rs,
# forwarder/src/cli.rs). Keep them in step with the code.
AGENT_REQUEST_TIMEOUT = "30s"  # SIDECRED_REQUEST_TIMEOUT: bounds one call to the token endpoint
AGENT_LEASE_DURATION = "15s"  # SIDECRED_LEASE_DURATION: with a lease, also bounds that call (its fence)
# With a lease, the holder hands the lease on only once the shared Secret holds its last pair; the write
# after a refresh is given this long (CONFIRM_WRITE in agent/src/cmd/run.rs) before it is served anyway.
AGENT_SECRET_WRITE = 10
# After that, a holder stopped with its pair still not in the Secret keeps the lease and retries the write
# this long before it exits without releasing (the lease then expires on its own).
AGENT_SHUTDOWN_WRITE_WAIT = "5s"  # SIDECRED_SHUTDOWN_WRITE_WAIT
FORWARDER_SHUTDOWN_DELAY = "5s"  # SIDECRED_SHUTDOWN_DELAY: still accepting after SIGTERM, /readyz 503
FORWARDER_DRAIN_TIMEOUT = "30s"  # SIDECRED_DRAIN_TIMEOUT: open streams finishing after the delay
# The platforms' defaults when nothing is set.
K8S_TERMINATION_GRACE = 30  # pod.spec.terminationGracePeriodSeconds
COMPOSE_STOP_GRACE = "10s"  # a service's stop_grace_period
# On top of the sum: writing the new pair to the Secret or the state file, and the runtime's own delays.
MARGIN_SECONDS = 10

_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def seconds(text):
    """A duration as humantime (the binaries) or Compose write it: 30s, 1m30s, 500ms, 1h."""
    text = str(text).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"cannot read the duration {text!r}")
    total = 0.0
    for number, unit in parts:
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} in the duration {text!r}")
        total += float(number) * _UNITS[unit]
    return total


def shortfall(grace, *steps):
    """How many seconds `grace` lacks to cover `steps` (seconds each) plus the margin; 0 when it covers them."""
    need = sum(steps) + MARGIN_SECONDS
    return max(0.0, need - grace)
