#!/usr/bin/env bash
# Benchmarks sidecred-forwarder against the same upstream reached directly, through nginx set up as a
# static header-injecting proxy, and through the floor of sidecred's own stack (bench/src/bin/proxy_floor.rs:
# a bare hyper server + hyper-util pooled client setting the same headers from constants), with one load
# generator (wrk) for all four:
#   - throughput: wrk -t2 -c64 for $DURATION        -> requests/s, and the ratio to nginx
#   - latency:    wrk -t1 -c1  for $DURATION        -> p50/p99, and what each proxy adds to direct
#   (each measured in $ROUNDS rounds that alternate the four setups; medians reported)
#   - memory:     the forwarder's VmRSS idle, and with 256 SSE streams held open (bench/src/bin/streams.rs)
# Targets: >= 0.8x nginx's req/s; <= 150 us added at p50; RSS <= 20 MiB under 256 streams.
#
# Usage: bench/forwarder.sh [--smoke]
#   --smoke  2 s runs; fails only when a component fails (CI), reports the targets without enforcing them.
# Installs wrk and nginx-light from Debian when missing. Everything listens on 127.0.0.1 only.
set -euo pipefail

SMOKE=0
case "${1:-}" in
    --smoke) SMOKE=1 ;;
    "") ;;
    *) echo "usage: $0 [--smoke]" >&2; exit 64 ;;
esac
if ((SMOKE)); then DURATION=2s; HOLD=1s; ROUNDS=1; else DURATION=6s; HOLD=3s; ROUNDS=5; fi
CONNS=64
THREADS=2
STREAMS=256

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
install_wrk_and_nginx

build_release

start_work sidecred-bench

OAUTH_BETA="$(anthropic_const OAUTH_BETA)"
ANTHROPIC_VERSION="$(anthropic_const ANTHROPIC_VERSION)"

# --- upstream ------------------------------------------------------------------------------------
"$BIN/upstream" --listen 127.0.0.1:0 >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_for "the upstream" 10 grep -q '^listening' "$WORK/upstream.log"
UPSTREAM="$(awk '/^listening/{print $2; exit}' "$WORK/upstream.log")"

# --- the floor: the stack without sidecred ------------------------------------------------------
"$BIN/proxy_floor" --listen 127.0.0.1:0 --upstream "$UPSTREAM" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_for "the floor proxy" 10 grep -q '^listening' "$WORK/floor.log"
FLOOR="$(awk '/^listening/{print $2; exit}' "$WORK/floor.log")"

# --- agent, with a token valid for hours so no refresh happens (the token URL is never asked) ----
mkdir -p "$WORK/creds" "$WORK/state" "$WORK/run"
EXPIRES_MS=$((($(date +%s) + 8 * 3600) * 1000))
cat >"$WORK/creds/.credentials.json" <<EOF
{"claudeAiOauth":{"accessToken":"bench-access-token","refreshToken":"bench-refresh-token","expiresAt":$EXPIRES_MS,"scopes":["user:inference"]}}
EOF
chmod 600 "$WORK/creds/.credentials.json"
SOCKET="$WORK/run/agent.sock"
SIDECRED_LOG=warn "$BIN/sidecred-agent" run --credentials "$WORK/creds/.credentials.json" --state-dir "$WORK/state" \
    --socket "$SOCKET" --token-url http://127.0.0.1:9/ >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_for "the agent" 20 "$BIN/sidecred-agent" status --socket "$SOCKET"

# --- forwarder: warnings and its start-up line; access log off, like nginx's below ----------------
SIDECRED_LOG="warn,sidecred_forwarder=info,sidecred_forwarder::access=off" "$BIN/sidecred-forwarder" \
    --listen 127.0.0.1:0 --upstream "http://$UPSTREAM" --socket "$SOCKET" >"$WORK/forwarder.log" 2>&1 &
FORWARDER_PID=$!
PIDS+=("$FORWARDER_PID")
wait_for "the forwarder" 20 grep -q ' listening ' "$WORK/forwarder.log"
FORWARDER="$(sed -n 's/.* listening addr=\([^ ]*\).*/\1/p' "$WORK/forwarder.log" | head -n1)"
wait_for "the forwarder's /readyz" 20 curl -fsS "http://$FORWARDER/readyz"

# --- nginx: a static proxy that injects the same headers, keepalive to the upstream --------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx/tmp"
nginx_config "$WORK/nginx" "$NGINX_PORT" "$UPSTREAM" bench-access-token >"$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_for "nginx" 20 curl -fsS -X POST -d '{}' "http://127.0.0.1:$NGINX_PORT/v1/messages"

# --- load ----------------------------------------------------------------------------------------
cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"Say ok."}]}'
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "$ANTHROPIC_VERSION"
wrk.headers["x-api-key"] = "client-key"
EOF

declare -A URL=(
    [direct]="http://$UPSTREAM/v1/messages"
    [nginx]="http://127.0.0.1:$NGINX_PORT/v1/messages"
    [floor]="http://$FLOOR/v1/messages"
    [sidecred]="http://$FORWARDER/v1/messages"
)
SETUPS=(direct nginx floor sidecred)

# run_wrk NAME THREADS CONNS DURATION
run_wrk() {
    local out="$WORK/wrk-$1-c$3.txt"
    wrk -t"$2" -c"$3" -d"$4" --latency -s "$WORK/post.lua" "${URL[$1]}" >"$out" 2>&1 || die "wrk failed against $1: $(cat "$out")"
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$out"; then die "errors from $1: $(cat "$out")"; fi
    alive "$UPSTREAM_PID" upstream "$WORK/upstream.log"
    alive "$AGENT_PID" agent "$WORK/agent.log"
    alive "$FORWARDER_PID" forwarder "$WORK/forwarder.log"
    alive "$NGINX_PID" nginx "$WORK/nginx/error.log"
    alive "$FLOOR_PID" "the floor proxy" "$WORK/floor.log"
    echo "$out"
}

curl -fsS -X POST -d '{}' "${URL[sidecred]}" >/dev/null || die "a request through the forwarder failed"
RSS_IDLE="$(rss_kib "$FORWARDER_PID")"

log "warm-up"
for s in "${SETUPS[@]}"; do f="$(run_wrk "$s" "$THREADS" "$CONNS" 1s)"; done

# Rounds alternate the setups so that a noisy neighbour on a shared machine hits all four alike; the
# median of the rounds is reported.
declare -A RPS_ALL P50_ALL P99_ALL RPS P50 P99
for round in $(seq 1 "$ROUNDS"); do
    for s in "${SETUPS[@]}"; do
        log "round $round/$ROUNDS throughput: $s (-t$THREADS -c$CONNS -d$DURATION)"
        f="$(run_wrk "$s" "$THREADS" "$CONNS" "$DURATION")"
        RPS_ALL[$s]+="$(rps "$f") "
    done
    for s in "${SETUPS[@]}"; do
        log "round $round/$ROUNDS latency: $s (-t1 -c1 -d$DURATION)"
        f="$(run_wrk "$s" 1 1 "$DURATION")"
        P50_ALL[$s]+="$(pct_us "$f" 50) "
        P99_ALL[$s]+="$(pct_us "$f" 99) "
    done
done
for s in "${SETUPS[@]}"; do
    RPS[$s]="$(tr ' ' '\n' <<<"${RPS_ALL[$s]}" | grep . | median)"
    P50[$s]="$(tr ' ' '\n' <<<"${P50_ALL[$s]}" | grep . | median)"
    P99[$s]="$(tr ' ' '\n' <<<"${P99_ALL[$s]}" | grep . | median)"
done

log "memory: $STREAMS SSE streams through the forwarder"
STREAMS_OUT="$("$BIN/streams" --addr "$FORWARDER" --count "$STREAMS" --pid "$FORWARDER_PID" --hold "$HOLD")" ||
    die "holding $STREAMS streams failed"
RSS_STREAMS="$(sed -n 's/.*rss_kib=\([0-9]*\).*/\1/p' <<<"$STREAMS_OUT")"
alive "$FORWARDER_PID" forwarder "$WORK/forwarder.log"

# --- report --------------------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
# Each round measured nginx and sidecred back to back, so their ratio is taken per round (a noisy
# neighbour then hits both alike) and the median reported.
# ratio_of A B: the median of the per-round ratios of A's req/s to B's, and the ratios themselves.
ratio_of() {
    local -a a b
    local i all=""
    read -r -a a <<<"${RPS_ALL[$1]}"
    read -r -a b <<<"${RPS_ALL[$2]}"
    for i in "${!a[@]}"; do
        all+="$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { printf "%.3f", x / y }') "
    done
    printf '%s|%s' "$(tr ' ' '\n' <<<"$all" | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) x = v[(NR + 1) / 2]; else x = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", x }')" "${all% }"
}
IFS='|' read -r RATIO RATIOS <<<"$(ratio_of sidecred nginx)"
IFS='|' read -r FLOOR_RATIO FLOOR_RATIOS <<<"$(ratio_of floor nginx)"
IFS='|' read -r OF_FLOOR OF_FLOOR_RATIOS <<<"$(ratio_of sidecred floor)"
ADDED_P50=$((P50[sidecred] - P50[direct]))
ADDED_P99=$((P99[sidecred] - P99[direct]))
NGINX_P50=$((P50[nginx] - P50[direct]))
NGINX_P99=$((P99[nginx] - P99[direct]))
FLOOR_P50=$((P50[floor] - P50[direct]))
FLOOR_P99=$((P99[floor] - P99[direct]))
ok() { if awk "BEGIN { exit !($1) }"; then echo "yes"; else echo "**no**"; fi; }
OK_RPS="$(ok "$RATIO >= 0.8")"
OK_P50="$(ok "$ADDED_P50 <= 150")"
OK_RSS="$(ok "$RSS_STREAMS <= 20 * 1024")"

cat <<EOF

### sidecred-forwarder benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)$( ((SMOKE)) && echo ", smoke"))

| setup | req/s (c=$CONNS) | p50 (c=1) | p99 (c=1) | added p50 | added p99 |
|---|---:|---:|---:|---:|---:|
| direct to upstream | ${RPS[direct]} | ${P50[direct]} µs | ${P99[direct]} µs | – | – |
| nginx (static headers) | ${RPS[nginx]} | ${P50[nginx]} µs | ${P99[nginx]} µs | ${NGINX_P50} µs | ${NGINX_P99} µs |
| floor: bare hyper + hyper-util proxy (static headers) | ${RPS[floor]} | ${P50[floor]} µs | ${P99[floor]} µs | ${FLOOR_P50} µs | ${FLOOR_P99} µs |
| sidecred (agent + forwarder) | ${RPS[sidecred]} | ${P50[sidecred]} µs | ${P99[sidecred]} µs | ${ADDED_P50} µs | ${ADDED_P99} µs |

| target | measured | goal | met |
|---|---:|---:|:--:|
| req/s vs nginx (median of per-round ratios: ${RATIOS}) | ${RATIO}× | ≥ 0.80× | $OK_RPS |
| for scale: the floor vs nginx (${FLOOR_RATIOS}) | ${FLOOR_RATIO}× | – | |
| for scale: sidecred vs the floor (${OF_FLOOR_RATIOS}) | ${OF_FLOOR}× | – | |
| added latency p50 | ${ADDED_P50} µs | ≤ 150 µs | $OK_P50 |
| forwarder RSS, $STREAMS SSE streams | $(mib "$RSS_STREAMS") | ≤ 20 MiB | $OK_RSS |
| forwarder RSS, idle | $(mib "$RSS_IDLE") | – | |

wrk $DURATION per run, median of $ROUNDS alternating rounds (req/s per round: direct ${RPS_ALL[direct]}/ nginx ${RPS_ALL[nginx]}/ floor ${RPS_ALL[floor]}/ sidecred ${RPS_ALL[sidecred]}); nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //'), 2 worker processes, access log off; forwarder 2 workers, access log off.
EOF

if ((!SMOKE)) && [[ "$OK_RPS$OK_P50$OK_RSS" != "yesyesyes" ]]; then
    echo "bench: a target was missed" >&2
    exit 2
fi
