"""Rules for the Prometheus Operator objects: each pod scraped once and each alert shipped once, or every alert
fires twice (components/monitoring listed inside each account's kustomization instead of once above them).
"""


def _overlap(a, b):
    """Two matchLabels selectors can select one pod unless they require different values for a key."""
    return all(b.get(k, v) == v for k, v in a.items())


def check_monitoring(bundle, docs, fail):
    alerts = {}
    for d in docs:
        if d["kind"] != "PrometheusRule":
            continue
        for group in d["spec"].get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert")
                if name and name in alerts:
                    fail(f"{bundle} PrometheusRule/{d['metadata']['name']}",
                         f"alert {name} is also in PrometheusRule/{alerts[name]}: it would fire twice; list "
                         "components/monitoring once per namespace")
                elif name:
                    alerts[name] = d["metadata"]["name"]
    endpoints = []  # (PodMonitor name, matchLabels, port)
    for d in docs:
        if d["kind"] != "PodMonitor":
            continue
        selector = d["spec"].get("selector", {}).get("matchLabels", {})
        for ep in d["spec"].get("podMetricsEndpoints", []):
            for other, other_selector, port in endpoints:
                if port == ep.get("port") and _overlap(selector, other_selector):
                    fail(f"{bundle} PodMonitor/{d['metadata']['name']}",
                         f"scrapes port {port} of the pods PodMonitor/{other} scrapes: every series twice, every "
                         "alert twice; list components/monitoring once per namespace")
            endpoints.append((d["metadata"]["name"], selector, ep.get("port")))
