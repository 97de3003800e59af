# ccproxy-api, the Python proxy of the deployment guide most users follow today (sourced by bench/peers.sh).
# Installed from PyPI into a venv of its own, at a pinned version, and configured to only proxy: its
# Claude API and Claude OAuth plugins alone, no fallback that runs `npx @anthropic-ai/claude-code` (it
# would download Claude Code to read its headers), no version check against GitHub, its base URLs pointed
# at this machine. Nothing it does reaches past loopback.

CCPROXY_VERSION=0.2.10
CCPROXY_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/peers/ccproxy-$CCPROXY_VERSION"
# Its Anthropic Messages route (the plugin mounts its routes under /claude).
CCPROXY_PATH=/claude/v1/messages

install_ccproxy() {
    if [[ -x "$CCPROXY_VENV/bin/ccproxy" ]] &&
        "$CCPROXY_VENV/bin/python" -c "import importlib.metadata as m; assert m.version('ccproxy-api') == '$CCPROXY_VERSION'" 2>/dev/null; then
        return
    fi
    log "installing ccproxy-api $CCPROXY_VERSION into $CCPROXY_VENV"
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
    rm -rf "$CCPROXY_VENV"
    python3 -m venv "$CCPROXY_VENV"
    "$CCPROXY_VENV/bin/pip" install --quiet --disable-pip-version-check "ccproxy-api==$CCPROXY_VERSION" >&2
}

# ccproxy_config PORT API_BASE_URL TOKEN_URL: the whole configuration, on stdout (TOML).
ccproxy_config() {
    cat <<EOF
enabled_plugins = ["claude_api", "oauth_claude"]

[server]
host = "127.0.0.1"
port = $1

[binary]
# Both are needed: package_manager_only (on by default) skips the fallback switch entirely.
fallback_enabled = false
package_manager_only = false

[scheduler]
version_check_enabled = false

[plugins.claude_api]
base_url = "$2"

[plugins.oauth_claude]
token_url = "$3"
base_url = "${3%/v1/oauth/token}"
profile_url = "${3%/v1/oauth/token}/api/oauth/profile"
EOF
}

# ccproxy_prepare DIR PORT API_BASE_URL TOKEN_URL: DIR becomes the process's home (its credentials go in
# DIR/home/.claude/.credentials.json) and holds its configuration; sets CCPROXY_CMD to the command that
# runs it there: its own environment (no proxy variables), logging at WARNING like the access logs the
# other setups run without.
ccproxy_prepare() {
    local dir="$1"
    mkdir -p "$dir/home/.claude" "$dir/home/.config" "$dir/home/.cache" "$dir/home/.local/share"
    ccproxy_config "$2" "$3" "$4" >"$dir/ccproxy.toml"
    CCPROXY_CMD=(env -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u http_proxy -u https_proxy -u all_proxy
        HOME="$dir/home" XDG_CONFIG_HOME="$dir/home/.config" XDG_CACHE_HOME="$dir/home/.cache"
        XDG_DATA_HOME="$dir/home/.local/share" NO_PROXY=127.0.0.1,localhost
        "$CCPROXY_VENV/bin/ccproxy" serve --config "$dir/ccproxy.toml" --log-level WARNING)
}

ccproxy_version() { echo "ccproxy-api $CCPROXY_VERSION"; }
