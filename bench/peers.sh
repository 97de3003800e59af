#!/usr/bin/env bash
# sidecred beside what users run today, in one run on loopback: the same upstream reached directly,
# through nginx as a static header injector, through ccproxy-api (the Python proxy of the usual deployment
# guide, bench/peers/ccproxy.sh) and through sidecred (agent + forwarder).
#   - load:        wrk at 1, 64 and 256 connections -> req/s, p50/p99 ($ROUNDS alternating rounds, medians)
#   - SSE:         what each adds to every event of streams of 50 events 20 ms apart (p50, p99, max)
#   - memory:      RSS idle, and with 256 SSE streams held open
#   - start-up:    process start to the first 200, polled every 20 ms (median of $STARTS starts)
#   - correctness, against the end-to-end tests' fakes of the token endpoint and the API
#     (bench/src/bin/peers_world.rs): refresh calls for 50 concurrent requests on an expired token; requests
#     that succeed after the first rotation when the credentials are mounted read-only (a private mount
#     namespace, as the kubelet mounts a Secret); what an upstream 401 leads to.
# Where a setup cannot do something (nginx has a fixed token), the table says so.
#
# Usage: bench/peers.sh [--smoke]
#   full:     writes the tables into README.md (between the peers markers) and the chart to docs/peers.png
#   --smoke:  short runs, the same steps; prints the tables, leaves README.md and docs/ alone (CI)
# Installs wrk, nginx and gnuplot from Debian and ccproxy-api from PyPI when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/peers/ccproxy.sh
source "$ROOT/bench/peers/ccproxy.sh"
parse_smoke "$@"
if ((SMOKE)); then
    DURATION=1s; ROUNDS=1; STARTS=1; HOLD=1s; SSE_STREAMS=2; AFTER_ROTATION=5; LATER=2; OPEN_WITHIN=20s
else
    DURATION=5s; ROUNDS=3; STARTS=3; HOLD=3s; SSE_STREAMS=8; AFTER_ROTATION=20; LATER=5; OPEN_WITHIN=60s
fi
CONNECTIONS=(1 64 256)
STREAMS=256
STAMPEDE=50

LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"
install_wrk_and_nginx
command -v gnuplot >/dev/null || { log "installing gnuplot"; apt_install gnuplot-nox; }
install_ccproxy
command -v unshare >/dev/null || apt_install util-linux

build_release

start_work sidecred-peers
RESULTS="$WORK/results.txt"
: >"$RESULTS"
result() { printf '%s %s\n' "$1" "${*:2}" >>"$RESULTS"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
ANTHROPIC_VERSION="$(anthropic_const ANTHROPIC_VERSION)"
MESSAGE='{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"Say ok."}]}'
# post URL: the status of one Messages request (000 when nothing answered).
post() {
    curl -s -o /dev/null -w '%{http_code}' -m 30 -X POST -H 'content-type: application/json' \
        -H "anthropic-version: $ANTHROPIC_VERSION" -H 'x-api-key: client-key' -d "$MESSAGE" "$1" || true
}
answers_200() { [[ "$(post "$1")" == 200 ]]; }
# A credentials file with a token valid for hours: the main runs never refresh (the token URL is never asked).
valid_credentials() {
    local expires=$((($(date +%s) + 8 * 3600) * 1000))
    printf '{"claudeAiOauth":{"accessToken":"bench-access-token","refreshToken":"bench-refresh-token","expiresAt":%s,"scopes":["user:inference"],"subscriptionType":"max"}}\n' "$expires" >"$1"
    chmod 600 "$1"
}
# The command prefix that runs a program with DIR mounted read-only in a private mount namespace, as the
# kubelet mounts a Secret (root ignores file modes, so a chmod would prove nothing): "${RO_MOUNT[@]}" DIR CMD...
# shellcheck disable=SC2016
RO_MOUNT=(unshare -m sh -c 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"' sh)

# --- the setups: start_<setup> NAME UPSTREAM_URL TOKEN_URL CREDENTIALS [ro] sets ADDR, URLPATH, PROCS --
start_direct() { :; }
start_nginx() {
    local dir="$WORK/$1" port
    port="$(free_port)"
    mkdir -p "$dir/tmp"
    nginx_config "$dir" "$port" "${2#http://}" bench-access-token >"$dir/nginx.conf"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    PIDS+=("$!")
    ADDR="127.0.0.1:$port" URLPATH=/v1/messages PROCS="$!" LOGFILE="$dir/error.log"
}
start_ccproxy() {
    local dir="$WORK/$1" port ro=()
    port="$(free_port)"
    ccproxy_prepare "$dir" "$port" "$2" "$3"
    cp "$4" "$dir/home/.claude/.credentials.json"
    [[ "${5:-}" == ro ]] && ro=("${RO_MOUNT[@]}" "$dir/home/.claude")
    (cd "$dir" && exec "${ro[@]}" "${CCPROXY_CMD[@]}") >"$dir/log" 2>&1 &
    PIDS+=("$!")
    ADDR="127.0.0.1:$port" URLPATH="$CCPROXY_PATH" PROCS="$!" LOGFILE="$dir/log"
}
start_sidecred() {
    local dir="$WORK/$1" ro=() agent
    mkdir -p "$dir/creds" "$dir/state"
    cp "$4" "$dir/creds/.credentials.json"
    [[ "${5:-}" == ro ]] && ro=("${RO_MOUNT[@]}" "$dir/creds")
    SIDECRED_LOG=warn "${ro[@]}" "$BIN/sidecred-agent" run --credentials "$dir/creds/.credentials.json" \
        --state-dir "$dir/state" --socket "$dir/agent.sock" --token-url "$3" >"$dir/agent.log" 2>&1 &
    agent=$!
    PIDS+=("$agent")
    SIDECRED_LOG="warn,sidecred_forwarder=info,sidecred_forwarder::access=off" "$BIN/sidecred-forwarder" \
        --listen 127.0.0.1:0 --upstream "$2" --socket "$dir/agent.sock" >"$dir/forwarder.log" 2>&1 &
    PIDS+=("$!")
    wait_for "the forwarder ($1)" 30 grep -q ' listening ' "$dir/forwarder.log"
    ADDR="$(sed -n 's/.* listening addr=\([^ ]*\).*/\1/p' "$dir/forwarder.log" | head -n1)"
    URLPATH=/v1/messages PROCS="$agent $!" LOGFILE="$dir/forwarder.log"
}
# Whether a setup has started serving (without sending it a Messages request).
serving() {
    case "$1" in
        ccproxy) curl -fsS -m 2 "http://$ADDR/health/live" ;;
        sidecred) curl -fsS -m 2 "http://$ADDR/readyz" ;;
        *) curl -s -m 2 -o /dev/null "http://$ADDR/" ;;
    esac
}

# --- the upstream and the main instances; start-up measured as process start to first 200 --------
log "upstream"
"$BIN/upstream" --listen 127.0.0.1:0 >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_for "the upstream" 10 grep -q '^listening' "$WORK/upstream.log"
UPSTREAM="http://$(awk '/^listening/{print $2; exit}' "$WORK/upstream.log")"
valid_credentials "$WORK/valid.json"

SETUPS=(direct nginx ccproxy sidecred)
declare -A URL HOST MAIN_PROCS MAIN_LOG
HOST[direct]="${UPSTREAM#http://}" URL[direct]="$UPSTREAM/v1/messages" MAIN_PROCS[direct]="$UPSTREAM_PID"
MAIN_LOG[direct]="$WORK/upstream.log"
for s in nginx ccproxy sidecred; do
    starts=""
    for i in $(seq 1 "$STARTS"); do
        log "start-up $i/$STARTS: $s"
        t0="$(now_ms)"
        "start_$s" "$s-$i" "$UPSTREAM" http://127.0.0.1:9/unused "$WORK/valid.json"
        wait_for "$s to answer 200" 120 answers_200 "http://$ADDR$URLPATH"
        starts+="$(($(now_ms) - t0)) "
        if ((i < STARTS)); then for p in $PROCS; do stop "$p"; done; fi
    done
    result "start_ms.$s" "$(tr ' ' '\n' <<<"$starts" | grep . | median)" "$starts"
    HOST[$s]="$ADDR" URL[$s]="http://$ADDR$URLPATH" MAIN_PROCS[$s]="$PROCS" MAIN_LOG[$s]="$LOGFILE"
done
rss_sum() { local k=0 p c; for p in "$@"; do k=$((k + $(rss_kib "$p"))); for c in $(ps -o pid= --ppid "$p"); do k=$((k + $(rss_kib "$c"))); done; done; echo "$k"; }
for s in nginx ccproxy sidecred; do
    # shellcheck disable=SC2086
    result "rss_idle_kib.$s" "$(rss_sum ${MAIN_PROCS[$s]})"
done

# --- load ----------------------------------------------------------------------------------------
cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$MESSAGE'
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "$ANTHROPIC_VERSION"
wrk.headers["x-api-key"] = "client-key"
EOF
# load SETUP CONNS DURATION: one wrk run; prints "rps p50_us p99_us errors".
load() {
    local out="$WORK/wrk-$1-c$2.txt" threads=2 errors
    (($2 == 1)) && threads=1
    wrk -t"$threads" -c"$2" -d"$3" --timeout 10s --latency -s "$WORK/post.lua" "${URL[$1]}" >"$out" 2>&1 ||
        die "wrk failed against $1: $(cat "$out")"
    # A slow proxy times out or answers 5xx under load: that is a result, counted, not a failure.
    errors="$(awk '/Non-2xx/{n += $NF} /Socket errors/{gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")"
    # shellcheck disable=SC2086
    for p in ${MAIN_PROCS[$1]}; do alive "$p" "$1" "${MAIN_LOG[$1]}"; done
    echo "$(rps "$out") $(pct_us "$out" 50) $(pct_us "$out" 99) $errors"
}
log "warm-up"
for s in "${SETUPS[@]}"; do load "$s" 8 1s >/dev/null; done
declare -A RPS_ALL P50_ALL P99_ALL ERR_ALL
for round in $(seq 1 "$ROUNDS"); do
    for c in "${CONNECTIONS[@]}"; do
        for s in "${SETUPS[@]}"; do
            log "round $round/$ROUNDS: $s, $c connections, $DURATION"
            out="$(load "$s" "$c" "$DURATION")" || exit 1
            read -r r p50 p99 e <<<"$out"
            RPS_ALL[$s.$c]+="$r " P50_ALL[$s.$c]+="${p50:-0} " P99_ALL[$s.$c]+="${p99:-0} " ERR_ALL[$s.$c]+="$e "
        done
    done
done
of() { tr ' ' '\n' <<<"$1" | grep . | median; }
for key in "${!RPS_ALL[@]}"; do
    result "rps.$key" "$(of "${RPS_ALL[$key]}")" "${RPS_ALL[$key]}"
    result "p50_us.$key" "$(of "${P50_ALL[$key]}")"
    result "p99_us.$key" "$(of "${P99_ALL[$key]}")"
    result "errors.$key" "$(tr ' ' '\n' <<<"${ERR_ALL[$key]}" | awk '{n += $1} END {print n + 0}')"
done

# --- SSE: delay added to each event --------------------------------------------------------------
for s in "${SETUPS[@]}"; do
    log "SSE: $SSE_STREAMS streams of 50 events 20 ms apart through $s"
    path="/${URL[$s]#http://*/}"
    out="$("$BIN/sse_delay" --addr "${HOST[$s]}" --path "$path" --streams "$SSE_STREAMS" --events 50 --gap-ms 20)" ||
        die "SSE through $s failed"
    result "sse.$s" "$out"
done

# --- memory with 256 open streams (after the load, like bench/forwarder.sh) ------------------------
for s in nginx ccproxy sidecred; do
    log "memory: $STREAMS SSE streams through $s"
    path="/${URL[$s]#http://*/}"
    pids=()
    # shellcheck disable=SC2086
    for p in ${MAIN_PROCS[$s]}; do pids+=(--pid "$p"); for c in $(ps -o pid= --ppid "$p"); do pids+=(--pid "$c"); done; done
    ulimit -n "$(ulimit -Hn)"
    out="$("$BIN/streams" --addr "${HOST[$s]}" --path "$path" --count "$STREAMS" "${pids[@]}" --gap-ms 500 \
        --hold "$HOLD" --open-within "$OPEN_WITHIN" --partial 2>"$WORK/streams-$s.err")" ||
        die "holding streams through $s failed: $(tail -n 5 "$WORK/streams-$s.err")"
    result "streams.$s" "$out"
done
for s in nginx ccproxy sidecred; do
    # shellcheck disable=SC2086
    for p in ${MAIN_PROCS[$s]}; do stop "$p"; done
done

# --- correctness under stress, against the tests' fakes ------------------------------------------
# world NAME [--expired]: starts a world; sets WORLD_PID, TOKEN_URL, API, CONTROL; its login in $WORK/NAME.json.
world() {
    local log="$WORK/$1.world.log"
    "$BIN/peers_world" --credentials "$WORK/$1.json" "${@:2}" >"$log" 2>&1 &
    WORLD_PID=$!
    PIDS+=("$WORLD_PID")
    wait_for "the fake world ($1)" 20 grep -q '^control ' "$log"
    TOKEN_URL="$(awk '/^token_url /{print $2}' "$log")" API="$(awk '/^api /{print $2}' "$log")"
    CONTROL="$(awk '/^control /{print $2}' "$log")"
}
count() { curl -fsS -m 5 "$CONTROL/counts" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
# statuses N URL [parallel]: the status of N requests, one a line.
statuses() {
    local jobs=1
    [[ "${3:-}" == parallel ]] && jobs="$1"
    seq "$1" | xargs -P "$jobs" -I{} sh -c "curl -s -o /dev/null -w '%{http_code}\n' -m 60 -X POST -H 'content-type: application/json' -d '$MESSAGE' '$2' || echo 000"
}
ok_of() { grep -c '^200$' || true; }
stop_setup() { for p in $PROCS; do stop "$p"; done; stop "$WORLD_PID"; }
for s in ccproxy sidecred; do
    log "correctness: $s, $STAMPEDE concurrent requests on an expired token"
    world "$s-stampede" --expired
    "start_$s" "$s-stampede" "$API" "$TOKEN_URL" "$WORK/$s-stampede.json"
    wait_for "$s to serve" 120 serving "$s"
    ok="$(statuses "$STAMPEDE" "http://$ADDR$URLPATH" parallel | ok_of)"
    result "stampede.$s" "$(count refresh_requests) $ok"
    stop_setup

    log "correctness: $s, read-only credentials mount"
    world "$s-ro" --expired
    "start_$s" "$s-ro" "$API" "$TOKEN_URL" "$WORK/$s-ro.json" ro
    wait_for "$s to serve" 120 serving "$s"
    first="$(post "http://$ADDR$URLPATH")"
    rotations="$(count rotations)"
    ok="$(statuses "$AFTER_ROTATION" "http://$ADDR$URLPATH" | ok_of)"
    result "readonly.$s" "$rotations $first $ok $(count refresh_requests)"
    stop_setup

    log "correctness: $s, an upstream 401 (the access token revoked)"
    world "$s-401"
    "start_$s" "$s-401" "$API" "$TOKEN_URL" "$WORK/$s-401.json"
    wait_for "$s to serve" 120 serving "$s"
    warm="$(post "http://$ADDR$URLPATH")"
    curl -fsS -m 5 -X POST "$CONTROL/revoke" >/dev/null
    before="$(count refresh_requests)"
    first="$(post "http://$ADDR$URLPATH")"
    ok="$(statuses "$LATER" "http://$ADDR$URLPATH" | ok_of)"
    result "unauthorized.$s" "$warm $first $(($(count refresh_requests) - before)) $ok"
    stop_setup
done

# What the table claims for sidecred is checked, in the smoke run too: a regression turns CI red
# instead of quietly changing a cell. (The peers' rows are what they are: measured, not asserted.)
expect() { [[ "$2" == "$3" ]] || die "sidecred's $1: expected $3, measured $2"; }
read -r refreshes ok < <(grep '^stampede.sidecred ' "$RESULTS" | cut -d' ' -f2-)
expect "refresh calls for $STAMPEDE requests on an expired token" "$refreshes" 1
expect "requests answered 200 of $STAMPEDE on an expired token" "$ok" "$STAMPEDE"
read -r _ first ok refreshes < <(grep '^readonly.sidecred ' "$RESULTS" | cut -d' ' -f2-)
expect "first request after a read-only rotation" "$first" 200
expect "requests answered 200 after a read-only rotation" "$ok" "$AFTER_ROTATION"
expect "refresh calls with a read-only mount" "$refreshes" 1
read -r _ first refreshes ok < <(grep '^unauthorized.sidecred ' "$RESULTS" | cut -d' ' -f2-)
expect "answer to the request the upstream refused with 401" "$first" 200
expect "refresh calls after an upstream 401" "$refreshes" 1
expect "requests answered 200 after an upstream 401" "$ok" "$LATER"
for c in "${CONNECTIONS[@]}"; do
    expect "failed requests under load at $c connections" "$(awk -v k="errors.sidecred.$c" '$1 == k {print $2}' "$RESULTS")" 0
done

# --- report --------------------------------------------------------------------------------------
result machine "$(nproc) cores, $(awk '/^MemTotal:/{printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)"
result load_at_start "$LOAD_AT_START"
result date "$(date -u +%Y-%m-%d)"
result versions "sidecred $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), $(ccproxy_version) (Python $("$CCPROXY_VENV/bin/python" -c 'import platform; print(platform.python_version())')), nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
result params_after_rotation "$AFTER_ROTATION"
result params_later "$LATER"
result params "wrk $DURATION per run, median of $ROUNDS alternating rounds; $SSE_STREAMS concurrent SSE streams; start-up median of $STARTS"
if ((SMOKE)); then
    python3 "$ROOT/bench/peers/report.py" "$RESULTS" --chart "$WORK/peers.png"
    [[ -s "$WORK/peers.png" ]] || die "no chart was drawn"
    log "smoke: every step ran (the numbers of a smoke run are not a benchmark)"
else
    python3 "$ROOT/bench/peers/report.py" "$RESULTS" --chart "$ROOT/docs/peers.png" --readme "$ROOT/README.md"
fi
