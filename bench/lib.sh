# What the benchmark scripts share (sourced, not run): installing Debian's tools, waiting for a condition,
# reading /proc, the API's header values, and the arithmetic of wrk's output. Expects ROOT to be set.

log() { printf '>> %s\n' "$*" >&2; }

# The one way every benchmark takes its arguments: none (the full run) or `--smoke` (a short run that
# fails only when a component fails). Sets SMOKE to 1 or 0; anything else is a usage error (exit 64).
parse_smoke() {
    SMOKE=0
    case "$#:${1:-}" in
        0:) ;;
        1:--smoke) SMOKE=1 ;;
        *) echo "usage: $0 [--smoke]" >&2; exit 64 ;;
    esac
}
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # The package's post-install would start a system-wide nginx on port 80. Debian's invoke-rc.d asks
    # /usr/sbin/policy-rc.d first; one that refuses every start (the usual container practice) keeps
    # the machine as it was. It is put there only for the install, and only when none exists.
    local policy=/usr/sbin/policy-rc.d placed=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; } ||
        rc=$?
    if ((placed)); then rm -f "$policy"; fi
    return "$rc"
}

# A run's scratch directory and the processes it started: start_work PREFIX sets WORK and PIDS (append
# each started pid) and, on exit, stops them all and removes WORK (kept when KEEP_WORK is set).
start_work() {
    WORK="$(mktemp -d -t "$1.XXXXXX")"
    PIDS=()
    trap stop_work EXIT
}
stop_work() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "${KEEP_WORK:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

# One release build of everything the benchmarks start, with the same package set in every script: a
# different set unifies other features, and cargo would build the shared crates again for each script.
# sidecred-tests (a dependency of sidecred-bench already) adds its one binary, the demo backend, which
# .ci/image.sh puts in the demo image from this same build.
build_release() {
    log "building (release)"
    (cd "$ROOT" && cargo build --release --locked -p sidecred-agent -p sidecred-forwarder -p sidecred-bench \
        -p sidecred-tests >&2)
}

find_nginx() { command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true; }

# Installs wrk and nginx when missing; sets NGINX to nginx's path.
install_wrk_and_nginx() {
    command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
    NGINX="$(find_nginx)"
    if [[ -z "$NGINX" ]]; then
        log "installing nginx"
        apt_install nginx-light || apt_install nginx
        NGINX="$(find_nginx)"
    fi
    [[ -n "$NGINX" ]] || die "nginx is not available"
}

# Polls a condition (no fixed sleeps as synchronisation): wait_for WHAT SECONDS CMD...
wait_for() {
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.02
    done
}
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited; its log:
$(tail -n 30 "$3" 2>/dev/null)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# A header value the API requires, read from where sidecred defines it, so that nginx and wrk send what
# the forwarder sends: anthropic_const NAME
anthropic_const() {
    sed -n "s/^pub const $1: &str = \"\(.*\)\";\$/\1/p" "$ROOT/proto/src/anthropic.rs" | grep . ||
        die "no string constant $1 in proto/src/anthropic.rs"
}

# nginx as a static proxy that injects the API's headers, keepalive to the upstream:
# nginx_config DIR PORT UPSTREAM_ADDR TOKEN > DIR/nginx.conf
nginx_config() {
    local dir="$1" port="$2" upstream="$3" token="$4"
    cat <<EOF
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    upstream api { server $upstream; keepalive 128; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header Connection "";
            proxy_set_header Host $upstream;
            proxy_set_header x-api-key "";
            proxy_set_header authorization "Bearer $token";
            proxy_set_header anthropic-beta "$(anthropic_const OAUTH_BETA)";
            proxy_set_header anthropic-version "$(anthropic_const ANTHROPIC_VERSION)";
        }
    }
}
EOF
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rps() { awk '/^Requests\/sec:/{printf "%.0f", $2}' "$1"; }
# Latency percentile in microseconds from wrk's "Latency Distribution": pct_us FILE 50
pct_us() {
    awk -v p="$2%" '$1 == p {
        v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); m = 1 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); m = 1000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); m = 1000000 }
        printf "%.0f", v * m; exit
    }' "$1"
}
