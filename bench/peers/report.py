#!/usr/bin/env python3
"""The tables and the chart of bench/peers.sh, from its results file (one `key value...` a line).

Prints the tables (Markdown) on stdout, draws the chart with gnuplot (--chart PNG), and with --readme
replaces what lies between the README's peers markers with the tables and the chart.
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SETUPS = ["direct", "nginx", "ccproxy", "sidecred"]
PROXIES = ["nginx", "ccproxy", "sidecred"]
NAMES = {
    "direct": "direct to upstream",
    "nginx": "nginx (static headers)",
    "ccproxy": "ccproxy-api",
    "sidecred": "sidecred (agent + forwarder)",
}
CONNECTIONS = ["1", "64", "256"]
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


def load(path):
    results = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(" ")
        results[key] = value.strip()
    return results


def first(results, key, default=None):
    value = results.get(key)
    return value.split()[0] if value else default


def fields(results, key):
    """`a=1 b=2` → {"a": "1", "b": "2"}."""
    return dict(kv.split("=", 1) for kv in results.get(key, "").split() if "=" in kv)


def num(value):
    return f"{int(float(value)):,}"


def us(value):
    v = float(value)
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def mib(kib):
    return f"{int(kib) / 1024:.1f} MiB"


def calls(n):
    return f"{n} refresh call" + ("" if n == "1" else "s")


def ratio(a, b):
    try:
        return f"{float(a) / float(b):.2f}×" if float(b) else "–"
    except (TypeError, ValueError):
        return "–"


def load_table(r):
    out = ["| setup | req/s, 1 conn. | req/s, 64 | req/s, 256 | p50 / p99, 1 conn. | p50 / p99, 64 | p50 / p99, 256 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for s in SETUPS:
        cells = []
        for c in CONNECTIONS:
            rps, errors = first(r, f"rps.{s}.{c}", "0"), int(first(r, f"errors.{s}.{c}", "0"))
            cells.append(num(rps) + (f" ({errors:,} failed)" if errors else ""))
        for c in CONNECTIONS:
            cells.append(f"{us(first(r, f'p50_us.{s}.{c}', '0'))} / {us(first(r, f'p99_us.{s}.{c}', '0'))}")
        out.append(f"| {NAMES[s]} | " + " | ".join(cells) + " |")
    return out


def resources_table(r):
    # Each setup's own figures, upstream to client: the tails of two runs do not subtract (a max minus
    # another run's max says nothing), so only the median is given as a difference from direct.
    out = ["| setup | SSE: per-event delay, upstream to client, p50 / p99 / max | added at p50 | RSS idle | RSS, 256 SSE streams | start-up to first 200 |",
           "|---|---:|---:|---:|---:|---:|"]
    base = fields(r, "sse.direct")
    for s in SETUPS:
        sse = fields(r, f"sse.{s}")
        delay = " / ".join(us(sse.get(k, 0)) for k in ("p50_us", "p99_us", "max_us"))
        if s == "direct":
            out.append(f"| {NAMES[s]} | {delay} | (the loopback's own) | – | – | – |")
            continue
        added = us(max(0, float(sse.get("p50_us", 0)) - float(base.get("p50_us", 0))))
        streams = fields(r, f"streams.{s}")
        held = mib(streams.get("rss_kib", 0))
        if streams.get("opened") != streams.get("streams"):
            held += f" (only {streams.get('opened')} of {streams.get('streams')} streams opened)"
        start = first(r, f"start_ms.{s}", "0")
        out.append(f"| {NAMES[s]} | {delay} | {added} | {mib(first(r, f'rss_idle_kib.{s}', 0))} | {held} | {int(start) / 1000:.2f} s |")
    return out


def correctness_table(r):
    out = ["| under stress | nginx | ccproxy-api | sidecred |", "|---|---|---|---|"]
    fixed = "cannot: a fixed token in its configuration"
    row = [f"refresh calls for 50 concurrent requests on an expired token", fixed]
    for s in ("ccproxy", "sidecred"):
        refreshes, ok = r.get(f"stampede.{s}", "? ?").split()[:2]
        row.append(f"**{refreshes}** ({ok} of 50 answered 200)")
    out.append("| " + " | ".join(row) + " |")
    row = ["read-only credentials mount: requests that succeed after the first rotation", fixed]
    for s in ("ccproxy", "sidecred"):
        rotations, first_status, ok, refreshes = r.get(f"readonly.{s}", "? ? ? ?").split()[:4]
        total = r.get("params_after_rotation", "")
        row.append(f"**{ok} of {total}** (first request {first_status}; {calls(refreshes)} in all, {rotations} rotated)")
    out.append("| " + " | ".join(row) + " |")
    row = ["upstream 401 (the access token revoked upstream)", "passed through; cannot refresh"]
    for s in ("ccproxy", "sidecred"):
        _warm, first_status, refreshes, ok = r.get(f"unauthorized.{s}", "? ? ? ?").split()[:4]
        later = r.get("params_later", "")
        refreshed = "refreshed" if refreshes not in ("0", "?") else "**not refreshed**"
        row.append(f"client got **{first_status}**, {refreshed} ({calls(refreshes)}); {ok} of {later} later requests succeed")
    out.append("| " + " | ".join(row) + " |")
    return out


def ratios(r):
    lines = []
    for peer in ("nginx", "ccproxy"):
        parts = [f"req/s {ratio(first(r, f'rps.sidecred.{c}'), first(r, f'rps.{peer}.{c}'))} at {c} conn." for c in CONNECTIONS]
        parts.append(f"RSS idle {ratio(first(r, 'rss_idle_kib.sidecred'), first(r, f'rss_idle_kib.{peer}'))}")
        parts.append(f"RSS with 256 streams {ratio(fields(r, 'streams.sidecred').get('rss_kib'), fields(r, f'streams.{peer}').get('rss_kib'))}")
        parts.append(f"start-up {ratio(first(r, 'start_ms.sidecred'), first(r, f'start_ms.{peer}'))}")
        lines.append(f"- sidecred vs {NAMES[peer]}: " + ", ".join(parts))
    return lines


def tables(r, chart_name=None):
    out = [f"Measured {r.get('date')} on {r.get('machine')} (load average at start: {r.get('load_at_start')}); "
           f"{r.get('versions')}; {r.get('params')}.", ""]
    if chart_name:
        out += [f"![Throughput and memory: direct, nginx, ccproxy-api, sidecred]({chart_name})", ""]
    out += load_table(r) + [""] + resources_table(r) + [""] + correctness_table(r) + [""]
    out += ["Ratios (sidecred ÷ peer; above 1 is more requests, more memory or a slower start):", ""] + ratios(r)
    return "\n".join(out) + "\n"


def chart(r, png):
    with tempfile.TemporaryDirectory() as tmp:
        rps = Path(tmp, "rps.dat")
        rps.write_text("\n".join(
            f'"{s}" ' + " ".join(first(r, f"rps.{s}.{c}", "0") for c in CONNECTIONS) for s in SETUPS) + "\n")
        mem = Path(tmp, "mem.dat")
        mem.write_text("\n".join(
            f'"{s}" {int(first(r, f"rss_idle_kib.{s}", 0)) / 1024:.1f} {int(fields(r, f"streams.{s}").get("rss_kib", 0)) / 1024:.1f}'
            for s in PROXIES) + "\n")
        title = f"{r.get('date')}, {r.get('machine')}\\n{r.get('versions')}".replace('"', "'")
        script = f"""
set terminal pngcairo size 1400,620 font "DejaVu Sans,11" noenhanced
set output "{png}"
set multiplot layout 1,2 title "{title}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set logscale y
set yrange [1:*]
set title "Requests per second (log scale), by concurrent connections"
plot "{rps}" using 2:xtic(1) title "1 conn.", "" using 3 title "64", "" using 4 title "256"
unset logscale y
set yrange [0:*]
set title "Resident memory (MiB)"
plot "{mem}" using 2:xtic(1) title "idle", "" using 3 title "256 SSE streams open"
unset multiplot
"""
        subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--chart", required=True)
    ap.add_argument("--readme")
    args = ap.parse_args()
    r = load(args.results)
    chart(r, args.chart)
    print(tables(r))
    if args.readme:
        readme = Path(args.readme)
        text = readme.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"{readme} has no {BEGIN} ... {END} block to replace")
        rel = Path(args.chart).resolve().relative_to(readme.resolve().parent)
        block = f"{BEGIN}\n{tables(r, rel.as_posix())}{END}"
        readme.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()
