#!/usr/bin/env bash
# Benchmarks sidecred-forwarder against the same upstream reached directly, through nginx set up as a
# static header-injecting proxy, and through the floor of sidecred's own stack (bench/src/bin/proxy_floor.rs:
# a bare hyper server + hyper-util pooled client setting the same headers from constants), with one load
# generator (wrk) for all; sidecred twice, with the token pushed by the agent (the default) and asked for
# per request (`--agent-mode per-request`):
#   - throughput: wrk -t2 -c64 for $DURATION        -> requests/s, the ratios to the floor and to nginx, and
#                 the CPU each proxy used per request (perf stat's task-clock where perf works, else
#                 /proc/PID/stat)
#   - latency:    wrk -t1 -c1  for $DURATION        -> p50/p99, and what each proxy adds to direct
#   (each measured in $ROUNDS rounds that alternate the setups, every other round in reverse order;
#   medians reported; SIDECRED_BENCH_ROUNDS and SIDECRED_BENCH_DURATION override the 8 rounds of 4 s)
#   - memory:     the forwarder's VmRSS idle, and with 256 SSE streams held open (bench/src/bin/streams.rs)
# Targets: >= 0.95x the floor's and >= 0.85x nginx's req/s; p50 at c=1 <= the floor's + 20 us; RSS <= 20 MiB
# under 256 streams and <= 8 MiB idle; CPU per request (forwarder and agent) <= 1.3x the floor's.
#
# Usage: bench/forwarder.sh [--smoke]
#   --smoke  2 s runs; fails only when a component fails (CI), reports the targets without enforcing them.
#   SIDECRED_BENCH_BEFORE=PATH  also measures another sidecred-forwarder binary (an older build, run with
#            the same flags but --agent-mode) against the same agent, as the row "before", so a change is
#            measured before and after in the same rounds.
# Installs wrk and nginx-light from Debian when missing. Everything listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
parse_smoke "$@"
if ((SMOKE)); then DURATION=2s; HOLD=1s; ROUNDS=1; else DURATION=4s; HOLD=3s; ROUNDS=8; fi
DURATION="${SIDECRED_BENCH_DURATION:-$DURATION}"
ROUNDS="${SIDECRED_BENCH_ROUNDS:-$ROUNDS}"
CONNS=64
THREADS=2
STREAMS=256

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

install_wrk_and_nginx
# perf counts CPU time precisely where the kernel lets it (Debian's linux-perf); /proc is the fallback.
if ((!SMOKE)) && ! command -v perf >/dev/null; then apt_install linux-perf || log "linux-perf not installed"; fi
PERF=0
if command -v perf >/dev/null && perf stat -e task-clock -x, -o /dev/null -- true >/dev/null 2>&1; then PERF=1; fi

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

# --- the same forwarder asking the agent per request, for comparison -----------------------------
SIDECRED_LOG="warn,sidecred_forwarder=info,sidecred_forwarder::access=off" "$BIN/sidecred-forwarder" \
    --listen 127.0.0.1:0 --upstream "http://$UPSTREAM" --socket "$SOCKET" --agent-mode per-request \
    >"$WORK/exchange.log" 2>&1 &
EXCHANGE_PID=$!
PIDS+=("$EXCHANGE_PID")
wait_for "the per-request forwarder" 20 grep -q ' listening ' "$WORK/exchange.log"
EXCHANGE="$(sed -n 's/.* listening addr=\([^ ]*\).*/\1/p' "$WORK/exchange.log" | head -n1)"
wait_for "the per-request forwarder's /readyz" 20 curl -fsS "http://$EXCHANGE/readyz"

# --- an older forwarder, for a before-and-after in one run ------------------------------------------
BEFORE="${SIDECRED_BENCH_BEFORE:-}"
if [[ -n "$BEFORE" ]]; then
    [[ -x "$BEFORE" ]] || die "SIDECRED_BENCH_BEFORE=$BEFORE is not an executable"
    SIDECRED_LOG="warn,sidecred_forwarder=info,sidecred_forwarder::access=off" "$BEFORE" \
        --listen 127.0.0.1:0 --upstream "http://$UPSTREAM" --socket "$SOCKET" >"$WORK/before.log" 2>&1 &
    BEFORE_PID=$!
    PIDS+=("$BEFORE_PID")
    wait_for "the forwarder before" 20 grep -q ' listening ' "$WORK/before.log"
    BEFORE_ADDR="$(sed -n 's/.* listening addr=\([^ ]*\).*/\1/p' "$WORK/before.log" | head -n1)"
    wait_for "the forwarder before's /readyz" 20 curl -fsS "http://$BEFORE_ADDR/readyz"
fi

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
    [exchange]="http://$EXCHANGE/v1/messages"
)
SETUPS=(direct nginx floor sidecred exchange)
if [[ -n "$BEFORE" ]]; then
    URL[before]="http://$BEFORE_ADDR/v1/messages"
    SETUPS+=(before)
fi
# The processes whose CPU a setup costs (nginx's workers are its children).
declare -A COST=(
    [direct]=""
    [nginx]="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
    [floor]="$FLOOR_PID"
    [sidecred]="$FORWARDER_PID $AGENT_PID"
    [exchange]="$EXCHANGE_PID $AGENT_PID"
    [before]="${BEFORE_PID:-} $AGENT_PID"
)
CLK_TCK="$(getconf CLK_TCK)"
# cpu_us PID...: the CPU time (user + system) the processes have used so far, in microseconds.
cpu_us() {
    local pid ticks=0
    for pid in "$@"; do ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
    echo $((ticks * 1000000 / CLK_TCK))
}

# run_wrk NAME THREADS CONNS DURATION: the wrk output's path; with CONNS > 1 also CPU-$NAME-c$CONNS.txt,
# the CPU the setup's processes used during the run in microseconds.
run_wrk() {
    local out="$WORK/wrk-$1-c$3.txt" cpu="$WORK/cpu-$1-c$3.txt" pids="${COST[$1]}" before
    local -a wrk_cmd=(wrk -t"$2" -c"$3" -d"$4" --latency -s "$WORK/post.lua" "${URL[$1]}")
    if [[ -z "$pids" || "$3" == 1 ]]; then
        "${wrk_cmd[@]}" >"$out" 2>&1 || die "wrk failed against $1: $(cat "$out")"
    elif ((PERF)); then
        # task-clock in milliseconds, as CSV: the first field.
        perf stat -e task-clock -x, -o "$WORK/perf-$1.csv" -p "$(tr -s ' ' ',' <<<"${pids% }")" -- \
            "${wrk_cmd[@]}" >"$out" 2>&1 || die "wrk failed against $1: $(cat "$out")"
        awk -F, '/task-clock/ { printf "%.0f\n", $1 * 1000 }' "$WORK/perf-$1.csv" >"$cpu"
    else
        # shellcheck disable=SC2086 # a list of pids
        before="$(cpu_us $pids)"
        "${wrk_cmd[@]}" >"$out" 2>&1 || die "wrk failed against $1: $(cat "$out")"
        # shellcheck disable=SC2086
        echo $(($(cpu_us $pids) - before)) >"$cpu"
    fi
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$out"; then die "errors from $1: $(cat "$out")"; fi
    alive "$UPSTREAM_PID" upstream "$WORK/upstream.log"
    alive "$AGENT_PID" agent "$WORK/agent.log"
    alive "$FORWARDER_PID" forwarder "$WORK/forwarder.log"
    alive "$EXCHANGE_PID" "the per-request forwarder" "$WORK/exchange.log"
    if [[ -n "$BEFORE" ]]; then alive "$BEFORE_PID" "the forwarder before" "$WORK/before.log"; fi
    alive "$NGINX_PID" nginx "$WORK/nginx/error.log"
    alive "$FLOOR_PID" "the floor proxy" "$WORK/floor.log"
    echo "$out"
}
# requests FILE: how many requests a wrk run completed.
requests() { awk '/requests in/ { print $1; exit }' "$1"; }

curl -fsS -X POST -d '{}' "${URL[sidecred]}" >/dev/null || die "a request through the forwarder failed"
RSS_IDLE="$(rss_kib "$FORWARDER_PID")"

log "warm-up"
for s in "${SETUPS[@]}"; do f="$(run_wrk "$s" "$THREADS" "$CONNS" 1s)"; done

# Rounds alternate the setups so that a noisy neighbour on a shared machine hits them all alike, every
# other round in the reverse order, so that a machine getting faster or slower during a round favours
# no setup; the median of the rounds is reported.
declare -A RPS_ALL P50_ALL P99_ALL CPU_ALL RPS P50 P99 CPU
REVERSED=()
for ((i = ${#SETUPS[@]} - 1; i >= 0; i--)); do REVERSED+=("${SETUPS[$i]}"); done
for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then ORDER=("${SETUPS[@]}"); else ORDER=("${REVERSED[@]}"); fi
    for s in "${ORDER[@]}"; do
        log "round $round/$ROUNDS throughput: $s (-t$THREADS -c$CONNS -d$DURATION)"
        f="$(run_wrk "$s" "$THREADS" "$CONNS" "$DURATION")"
        RPS_ALL[$s]+="$(rps "$f") "
        if [[ -s "$WORK/cpu-$s-c$CONNS.txt" ]]; then
            CPU_ALL[$s]+="$(awk -v us="$(cat "$WORK/cpu-$s-c$CONNS.txt")" -v n="$(requests "$f")" 'BEGIN { printf "%.1f", us / n }') "
        fi
    done
    for s in "${ORDER[@]}"; do
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
    # No CPU measured for direct (nothing in between): grep finds nothing, which is not a failure.
    CPU[$s]="$(tr ' ' '\n' <<<"${CPU_ALL[$s]:-}" | { grep . || true; } | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "–"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
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
IFS='|' read -r OF_FLOOR OF_FLOOR_RATIOS <<<"$(ratio_of sidecred floor)"
IFS='|' read -r EX_RATIO EX_RATIOS <<<"$(ratio_of exchange nginx)"
IFS='|' read -r EX_OF_FLOOR EX_OF_FLOOR_RATIOS <<<"$(ratio_of exchange floor)"
IFS='|' read -r FLOOR_RATIO FLOOR_RATIOS <<<"$(ratio_of floor nginx)"
added() { echo $((P50[$1] - P50[direct])); }
added99() { echo $((P99[$1] - P99[direct])); }
OVER_FLOOR_P50=$((P50[sidecred] - P50[floor]))
EX_OVER_FLOOR_P50=$((P50[exchange] - P50[floor]))
cpu_ratio() { awk -v a="${CPU[$1]}" -v b="${CPU[floor]}" 'BEGIN { if (a == "–" || b == "–" || b == 0) print "–"; else printf "%.2f", a / b }'; }
BEFORE_ROW="" BEFORE_TARGETS=""
if [[ -n "$BEFORE" ]]; then
    IFS='|' read -r BE_RATIO BE_RATIOS <<<"$(ratio_of before nginx)"
    IFS='|' read -r BE_OF_FLOOR BE_OF_FLOOR_RATIOS <<<"$(ratio_of before floor)"
    BEFORE_ROW="| sidecred before (\`$BEFORE\`) | ${RPS[before]} | ${CPU[before]} µs | ${P50[before]} µs | ${P99[before]} µs | $((P50[before] - P50[direct])) µs | $((P99[before] - P99[direct])) µs |"
    BEFORE_TARGETS="before: ${BE_OF_FLOOR}× the floor (${BE_OF_FLOOR_RATIOS}), ${BE_RATIO}× nginx (${BE_RATIOS}), p50 at c=1 $((P50[before] - P50[floor])) µs over the floor's, CPU per request $(cpu_ratio before)× the floor's."
fi
ok() { if awk "BEGIN { exit !($1) }" 2>/dev/null; then echo "yes"; else echo "**no**"; fi; }
OK_FLOOR="$(ok "$OF_FLOOR >= 0.95")"
OK_NGINX="$(ok "$RATIO >= 0.85")"
OK_P50="$(ok "$OVER_FLOOR_P50 <= 20")"
OK_RSS="$(ok "$RSS_STREAMS <= 20 * 1024")"
OK_IDLE="$(ok "$RSS_IDLE <= 8 * 1024")"
CPU_RATIO="$(cpu_ratio sidecred)"
OK_CPU="$(ok "$CPU_RATIO <= 1.3")"
if ((PERF)); then CPU_HOW="perf stat task-clock"; else CPU_HOW="/proc/PID/stat: perf not usable here"; fi

cat <<EOF

### sidecred-forwarder benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load average at start ${LOAD_AT_START}$( ((SMOKE)) && echo ", smoke"))

| setup | req/s (c=$CONNS) | CPU per request (c=$CONNS) | p50 (c=1) | p99 (c=1) | added p50 | added p99 |
|---|---:|---:|---:|---:|---:|---:|
| direct to upstream | ${RPS[direct]} | – | ${P50[direct]} µs | ${P99[direct]} µs | – | – |
| nginx (static headers) | ${RPS[nginx]} | ${CPU[nginx]} µs | ${P50[nginx]} µs | ${P99[nginx]} µs | $(added nginx) µs | $(added99 nginx) µs |
| floor: bare hyper + hyper-util proxy (static headers) | ${RPS[floor]} | ${CPU[floor]} µs | ${P50[floor]} µs | ${P99[floor]} µs | $(added floor) µs | $(added99 floor) µs |
| sidecred, token pushed (agent + forwarder) | ${RPS[sidecred]} | ${CPU[sidecred]} µs | ${P50[sidecred]} µs | ${P99[sidecred]} µs | $(added sidecred) µs | $(added99 sidecred) µs |
| sidecred, \`--agent-mode per-request\` | ${RPS[exchange]} | ${CPU[exchange]} µs | ${P50[exchange]} µs | ${P99[exchange]} µs | $(added exchange) µs | $(added99 exchange) µs |
${BEFORE_ROW}

| target | token pushed | per request | goal | met (pushed) |
|---|---:|---:|---:|:--:|
| req/s vs the floor (per-round ratios: ${OF_FLOOR_RATIOS}; ${EX_OF_FLOOR_RATIOS}) | ${OF_FLOOR}× | ${EX_OF_FLOOR}× | ≥ 0.95× | $OK_FLOOR |
| req/s vs nginx (${RATIOS}; ${EX_RATIOS}) | ${RATIO}× | ${EX_RATIO}× | ≥ 0.85× | $OK_NGINX |
| for scale: the floor vs nginx (${FLOOR_RATIOS}) | ${FLOOR_RATIO}× | | – | |
| p50 at c=1 over the floor's | ${OVER_FLOOR_P50} µs | ${EX_OVER_FLOOR_P50} µs | ≤ 20 µs | $OK_P50 |
| CPU per request vs the floor's ($CPU_HOW) | $(cpu_ratio sidecred)× | $(cpu_ratio exchange)× | ≤ 1.3× | $OK_CPU |
| forwarder RSS, $STREAMS SSE streams | $(mib "$RSS_STREAMS") | | ≤ 20 MiB | $OK_RSS |
| forwarder RSS, idle | $(mib "$RSS_IDLE") | | ≤ 8 MiB | $OK_IDLE |

${BEFORE_TARGETS}

wrk $DURATION per run, median of $ROUNDS rounds alternating the setups, every other round reversed (req/s per round: direct ${RPS_ALL[direct]}/ nginx ${RPS_ALL[nginx]}/ floor ${RPS_ALL[floor]}/ pushed ${RPS_ALL[sidecred]}/ per request ${RPS_ALL[exchange]}); nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //'), 2 worker processes, access log off; forwarders 2 workers, access log off; CPU per request is that of the setup's processes (sidecred: forwarder and agent) over the c=$CONNS runs.
EOF

if ((!SMOKE)) && [[ "$OK_FLOOR$OK_NGINX$OK_P50$OK_RSS$OK_IDLE$OK_CPU" != "yesyesyesyesyesyes" ]]; then
    echo "bench: a target was missed" >&2
    exit 2
fi
