#!/usr/bin/env bash
# Runs the agent and the forwarder on this machine, with the API on http://127.0.0.1:8000. Ctrl-C stops
# everything it started. Extra arguments go to the forwarder (e.g. --listen 127.0.0.1:8100).
#
#   scripts/run-local.sh           on ~/.claude/.credentials.json, or $SIDECRED_CREDENTIALS
#   scripts/run-local.sh --demo    without an account: against a stand-in for Claude's endpoints on this
#                                  machine (sidecred-demo-backend), with a login whose token expires within
#                                  a minute, so that you see the agent refresh it while requests go through
#
# It builds what it runs first (release; the first build takes minutes). SIDECRED_BIN_DIR=<dir> runs the
# binaries in <dir> instead and builds nothing (the demo's test runs it so, on the binaries it tests).
set -euo pipefail
if [[ -n ${SIDECRED_BIN_DIR:-} ]]; then SIDECRED_BIN_DIR=$(cd "$SIDECRED_BIN_DIR" && pwd); fi
cd "$(dirname "$0")/.."

demo=false
if [[ ${1:-} == --demo ]]; then
  demo=true
  shift
fi

say() { printf 'run-local: %s\n' "$*" >&2; }

bins=(sidecred-agent sidecred-forwarder sidecred-demo-backend)
if [[ -n ${SIDECRED_BIN_DIR:-} ]]; then
  bin=$SIDECRED_BIN_DIR
else
  say "building ${bins[*]} (release; a first build takes several minutes, later ones seconds)"
  # Not --quiet: on a small machine a cold build is long, and cargo's progress shows how far it is.
  # Both modes build the same three: cargo unifies the features of what one command builds, so building
  # the agent without the demo's stand-in (or with it) would rebuild most of the tree at each switch.
  cargo build --release "${bins[@]/#/--bin=}"
  bin=$PWD/target/release
fi
for b in "${bins[@]}"; do
  [[ -x $bin/$b ]] || { say "$bin/$b is missing"; exit 1; }
done

# Where the forwarder listens, to print it: --listen among the extra arguments, else SIDECRED_LISTEN.
listen=${SIDECRED_LISTEN:-127.0.0.1:8000}
args=("$@")
for i in "${!args[@]}"; do
  case ${args[i]} in
    --listen) listen=${args[i + 1]:-$listen} ;;
    --listen=*) listen=${args[i]#--listen=} ;;
  esac
done
export SIDECRED_LISTEN=$listen
host=${listen%:*} port=${listen##*:}
case $host in 0.0.0.0 | '[::]' | '') host=127.0.0.1 ;; esac
api=http://$host:$port
tcp_host=${host#[} tcp_host=${tcp_host%]}

pids=()
demo_dir=
stop() {
  # A second Ctrl-C must not cut short the wait for what this script started.
  trap '' INT TERM
  if ((${#pids[@]})); then
    say "stopping: ${names[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if [[ -n $demo_dir ]]; then rm -rf "$demo_dir"; fi
  if ((${#pids[@]})); then say "stopped"; fi
}
trap stop EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
# The processes run in sessions of their own, so that a Ctrl-C reaches this script alone, which stops them.
# Were they to get it too, each would shut down and exit 0 by itself, and bash, seeing a child exit
# normally while it waits, drops its SIGINT trap: the Ctrl-C would pass for a process ending on its own.
detach=()
if command -v setsid >/dev/null; then detach=(setsid); fi
names=()
# Starts "${@:2}" in the background; $1 names it in messages.
start() {
  names+=("$1")
  "${detach[@]}" "${@:2}" &
  pids+=($!)
}

# Waits until "$@" succeeds, while the process $1 names is alive; $2 says what is awaited.
wait_for() {
  local pid=$1 what=$2
  shift 2
  for _ in $(seq 1 400); do
    "$@" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { say "$what: the process ended first"; exit 1; }
    # In the background and waited for: a signal interrupts `wait` at once, and a foreground sleep that
    # outlives a SIGINT sent to this script alone would make bash drop it.
    sleep 0.05 &
    wait $!
  done
  say "$what: not ready after 20 s"
  exit 1
}
listening() { (exec 3<>"/dev/tcp/$tcp_host/$port") 2>/dev/null; }

# What to try, on stdout (the logs go to stderr).
print_demo_summary() {
  cat <<EOF

== sidecred demo: the agent and the forwarder, against a stand-in for Claude on this machine ==
Nothing here is Claude and no account is used; the stand-in's answers say so.
  API (the forwarder)  $api
  agent socket         $SIDECRED_SOCKET
  processes            stand-in ${pids[0]}, agent ${pids[1]}, forwarder ${pids[2]} (Ctrl-C stops all three)

The demo login's access token expires within a minute: watch the agent log "refreshed the access token"
(10 s after start, then every 40 s) and the stand-in log the new token's fingerprint on the next request.
  $bin/sidecred-agent status --socket $SIDECRED_SOCKET

Try it (any API key works):
  curl -N $api/v1/messages -H 'content-type: application/json' -H 'x-api-key: demo' \\
    -d '{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'

  ANTHROPIC_BASE_URL=$api ANTHROPIC_API_KEY=demo claude -p 'hi'

  The Python SDK (pip install anthropic):
python3 - <<'PY'
import anthropic
client = anthropic.Anthropic(base_url="$api", api_key="demo")
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                            messages=[{"role": "user", "content": "hi"}]) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
PY

  One-Hub: a channel of type "Anthropic Claude" with base URL $api/api/v1, any key, model
  claude-sonnet-4-5. One-Hub in a container reaches this machine by its address, not $host: start
  the demo with --listen 0.0.0.0:$port and use that address.

EOF
}

if $demo; then
  # Settings of a real setup must not reach the demo: a state directory or a Secret to write back to
  # would receive the demo's login, API keys would refuse the commands printed below.
  for v in $(compgen -e SIDECRED_); do
    case $v in SIDECRED_LISTEN | SIDECRED_LOG | SIDECRED_LOG_FORMAT | SIDECRED_BIN_DIR) ;; *) unset "$v" ;; esac
  done
  export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
  demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/sidecred-demo.XXXXXX")
  creds=$demo_dir/.credentials.json
  export SIDECRED_SOCKET=$demo_dir/agent.sock
  start stand-in "$bin/sidecred-demo-backend" --credentials "$creds" >"$demo_dir/backend.txt"
  wait_for "${pids[0]}" "the demo's stand-in" grep -q '^  credentials:' "$demo_dir/backend.txt"
  cat "$demo_dir/backend.txt" >&2
  endpoint() { sed -n "s/^  $1: *\([^ ]*\).*/\1/p" "$demo_dir/backend.txt"; }
  token_url=$(endpoint 'token endpoint') upstream=$(endpoint 'Messages API')
  # The stand-in's tokens live a minute; with 20 s of margin the first refresh comes 10 s after start
  # (the demo login expires in 30 s), then one every 40 s.
  start agent "$bin/sidecred-agent" run --credentials "$creds" --token-url "$token_url" --refresh-margin 20s
  forwarder_args=(--upstream "$upstream")
else
  creds=${SIDECRED_CREDENTIALS:-${HOME:-}/.claude/.credentials.json}
  : "${SIDECRED_SOCKET:=${XDG_RUNTIME_DIR:-/tmp/sidecred-$(id -u)}/sidecred-local/agent.sock}"
  export SIDECRED_SOCKET
  if [[ -f $creds ]]; then
    say "credentials: $creds (set SIDECRED_CREDENTIALS for another file)"
  else
    say "no credentials at $creds. Either:"
    say "  log in (the agent below picks the new file up within seconds):  $bin/sidecred-agent login"
    say "  or see sidecred work without an account:                        scripts/run-local.sh --demo"
    say "until then the API answers 503."
  fi
  start agent "$bin/sidecred-agent" run --credentials "$creds"
  forwarder_args=()
fi
agent=${pids[-1]}
wait_for "$agent" "the agent's socket" test -S "$SIDECRED_SOCKET"
# Nothing balances connections to it: on Ctrl-C it stops accepting at once (SIDECRED_SHUTDOWN_DELAY).
SIDECRED_SHUTDOWN_DELAY=${SIDECRED_SHUTDOWN_DELAY:-0s} start forwarder "$bin/sidecred-forwarder" "${forwarder_args[@]}" "$@"
wait_for "${pids[-1]}" "the forwarder on $listen (if the port is taken, pass --listen 127.0.0.1:<port>)" listening

if $demo; then
  print_demo_summary
else
  say "API: $api (ANTHROPIC_BASE_URL=$api, any ANTHROPIC_API_KEY); Ctrl-C stops it"
fi
status=0
wait -n || status=$?
for i in "${!pids[@]}"; do
  kill -0 "${pids[i]}" 2>/dev/null || say "the ${names[i]} (pid ${pids[i]}) ended with status $status; stopping the others"
done
exit "$status"
