# What the container steps share (sourced by .ci/image.sh and .ci/compose.sh, not run): Debian's podman
# with a configuration of its own, the stand-in for the distroless base, and the Python tools in a venv.
# Expects ROOT to be set.
#
# Cached between runs on one machine under ${SIDECRED_CONTAINERS_DIR:-~/.cache/sidecred/containers}: the
# configuration, the venv (podman-compose, PyYAML), the base's packages. Images stay in podman's storage.

CONTAINERS_DIR=${SIDECRED_CONTAINERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/containers}
# The name the Dockerfile's FROM lines use: importing the stand-in under it lets `--pull=never` resolve it.
BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# What the distroless base holds for a Rust binary linked against glibc: the C library and libgcc (and
# gcc-12-base, which libgcc-s1 depends on), CA certificates, time zones, /etc/services and friends.
BASE_PACKAGES=(base-files netbase tzdata libc6 libgcc-s1 gcc-12-base ca-certificates)
# Bump when the recipe below changes: the stand-in is rebuilt when its label differs.
BASE_RECIPE=1
PODMAN_COMPOSE_VERSION=1.6.0
# The images .ci/image.sh builds and .ci/compose.sh runs.
CI_IMAGE=localhost/sidecred:ci
CI_DEMO_IMAGE=localhost/sidecred-demo-backend:ci

say() { printf '>> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 "$@"; }

# Debian's podman and buildah with runc (crun fails on hybrid cgroups), netavark and aardvark-dns (so
# Compose services find each other by name) with iptables (netavark's firewall driver: without it every
# container with a network fails to start, "netavark: No such file or directory"), catatonit (a pod's
# infra container), and curl.
install_engine() {
    local want=(podman buildah runc netavark aardvark-dns iptables catatonit curl) missing=() pkg
    for pkg in "${want[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# podman's configuration for these steps only (CONTAINERS_CONF replaces the machine's files for podman,
# buildah and every podman that podman-compose starts): runc, netavark, and default ulimits this machine
# allows (podman asks for nofile 1048576 by default, which a lower hard limit refuses).
configure_engine() {
    local nofile
    nofile=$(ulimit -Hn)
    [[ $nofile == unlimited ]] && nofile=1048576
    mkdir -p "$CONTAINERS_DIR"
    cat >"$CONTAINERS_DIR/containers.conf" <<EOF
# Written by .ci/containers.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
EOF
    export CONTAINERS_CONF="$CONTAINERS_DIR/containers.conf"
    podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null || die "podman does not start with $CONTAINERS_CONF"
}

# The label that says which packages and recipe made the stand-in.
base_key() {
    local pkg versions=""
    for pkg in "${BASE_PACKAGES[@]}"; do
        versions+="$pkg=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }') "
    done
    printf 'recipe %s: %s' "$BASE_RECIPE" "$versions" | sha256sum | cut -c1-16
}

# No base image can be pulled here: make the distroless one from the Debian packages it is made of, with
# its passwd and group (nonroot is 65532), its user and its working directory. About 16 MB.
make_base() {
    local key have
    key=$(base_key)
    have=$(podman image inspect --format '{{index .Labels "sidecred.stand-in"}}' "$BASE_IMAGE" 2>/dev/null || true)
    if [[ $have == "$key" ]]; then
        say "the base stand-in $BASE_IMAGE is up to date ($key)"
        return
    fi
    say "making the base stand-in $BASE_IMAGE from ${BASE_PACKAGES[*]}"
    local work deb
    work=$(mktemp -d -t sidecred-base.XXXXXX)
    mkdir -p "$work/debs" "$work/rootfs"
    # _apt cannot write to a mktemp directory; downloading as root is what apt falls back to anyway.
    (cd "$work/debs" && apt-get -qq -o APT::Sandbox::User=root download "${BASE_PACKAGES[@]}") ||
        (apt_get update -qq && cd "$work/debs" && apt-get -qq -o APT::Sandbox::User=root download "${BASE_PACKAGES[@]}") ||
        { rm -rf "$work"; die "apt-get download ${BASE_PACKAGES[*]} failed"; }
    for deb in "$work"/debs/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/rootfs"
    done
    local r=$work/rootfs
    # What distroless leaves out: documentation, manuals, locales, lintian and maintainer leftovers.
    rm -rf "$r"/usr/share/{doc,man,info,lintian,locale} "$r"/usr/share/common-licenses
    # ca-certificates' bundle is made by its post-install script, which nothing runs here.
    mkdir -p "$r/etc/ssl/certs"
    find "$r/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat >"$r/etc/ssl/certs/ca-certificates.crt"
    cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat >"$r/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
    install -d -m 0700 "$r/root"
    install -d -m 0700 -o 65532 -g 65532 "$r/home/nonroot"
    install -d -m 1777 "$r/tmp"
    tar -C "$r" --numeric-owner -cf "$work/rootfs.tar" .
    podman image rm -f "$BASE_IMAGE" >/dev/null 2>&1 || true
    podman import --quiet \
        --change 'USER 65532:65532' \
        --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL sidecred.stand-in=$key" \
        "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$work"
    say "made $BASE_IMAGE: $(image_mb "$BASE_IMAGE") MB"
}

# An image's uncompressed size in whole MB (10^6 bytes, as podman prints it).
image_mb() {
    local bytes
    bytes=$(podman image inspect --format '{{.Size}}' "$1")
    echo $(((bytes + 500000) / 1000000))
}

# podman-compose and PyYAML in a venv of these steps' own, installed once (a complete install is marked).
install_python_tools() {
    local venv=$CONTAINERS_DIR/venv want="podman-compose==$PODMAN_COMPOSE_VERSION"
    if [[ $(cat "$venv/.installed" 2>/dev/null) != "$want" ]]; then
        say "installing $want into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$want" >&2
        printf '%s' "$want" >"$venv/.installed"
    fi
    VENV=$venv
}

# A streamed Messages request to the forwarder at BASE_URL (through the demo backend): 200, an event stream
# that ends, the demo's answer, arriving over time (the demo sends twelve pieces 100 ms apart; all at once
# would mean something buffered it). check_stream BASE_URL SCRATCH_FILE
check_stream() {
    local url=$1/v1/messages out=$2 timing code ctype start total
    timing=$(curl -sS -N -m 30 -o "$out" -w '%{http_code} %{content_type} %{time_starttransfer} %{time_total}' \
        "$url" -H 'content-type: application/json' -H 'x-api-key: demo' \
        -d '{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}') ||
        die "POST $url failed: $timing"
    read -r code ctype start total <<<"$timing"
    [[ $code == 200 ]] || die "POST $url answered $code: $(head -c 300 "$out")"
    [[ $ctype == text/event-stream* ]] || die "POST $url answered $ctype, not an event stream"
    grep -q 'event: message_stop' "$out" || die "the stream did not end with message_stop: $(tail -c 300 "$out")"
    grep -q 'sidecred demo' "$out" || die "the answer is not the demo's: $(head -c 300 "$out")"
    awk -v s="$start" -v t="$total" 'BEGIN { exit !(t - s >= 0.5) }' ||
        die "the answer arrived at once (first byte ${start}s, last ${total}s): it was buffered"
    say "POST $url streamed (first byte ${start}s, done ${total}s)"
}
