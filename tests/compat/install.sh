#!/usr/bin/env bash
# Installs the clients the compatibility tests run, at the versions pinned in tests/compat/versions, from
# their registries with each client's own default configuration: the Python SDK with pip into a venv, the
# TypeScript SDK and Claude Code with npm.
#
# They go to a cache that survives between runs on the same machine,
#   ${XDG_CACHE_HOME:-$HOME/.cache}/sidecred-compat/<first 16 hex digits of sha256(versions)>/
# (SIDECRED_COMPAT_DIR overrides the whole path; the tests read the same variable). A complete install is
# left alone, so running this again costs nothing; an interrupted one is started over. The last line printed
# is the directory. The tests refuse an install whose versions differ from tests/compat/versions.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
versions="$here/versions"
hash=$(sha256sum "$versions" | cut -c1-16)
dir=${SIDECRED_COMPAT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred-compat/$hash}
mkdir -p "$(dirname "$dir")"

# Two runs at once (two worktrees, a developer and CI) take turns instead of installing over each other.
exec 9>"$dir.lock"
flock 9

if cmp -s "$versions" "$dir/.complete" 2>/dev/null; then
  echo "$dir"
  exit 0
fi

started=$SECONDS
rm -rf "$dir"
mkdir -p "$dir/node"
pinned() { awk -v tool="$1" '$1 == tool { print $2 "@" $3 }' "$versions"; }

echo "installing the compatibility clients into $dir" >&2
for pkg in $(pinned pip); do
  spec="${pkg%@*}==${pkg##*@}"
  if [[ ! -x $dir/venv/bin/python ]]; then
    python3 -m venv "$dir/venv" || {
      echo "python3 -m venv failed: install Python 3.9+ with its venv module (Debian: apt-get install python3-venv)" >&2
      exit 1
    }
  fi
  "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" >&2
done

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ((node_major < 18)); then
  echo "node 18 or newer is needed for the TypeScript SDK and Claude Code's installer (found: ${node_major})" >&2
  exit 1
fi
mapfile -t npm_pkgs < <(pinned npm)
if ((${#npm_pkgs[@]})); then
  echo '{"private": true}' >"$dir/node/package.json"
  # Claude Code's package declares node >= 22 for its wrapper, but what it installs is a native binary
  # (from its platform package) that does not run on node: the engine warning is expected and harmless.
  (cd "$dir/node" && npm install --no-audit --no-fund --loglevel=error --save-exact "${npm_pkgs[@]}" >&2)
fi

# The pinned Claude Code must really be there: its postinstall swaps a placeholder for the native binary.
want=$(awk '$2 == "@anthropic-ai/claude-code" { print $3 }' "$versions")
if [[ -n $want ]]; then
  got=$("$dir/node/node_modules/.bin/claude" --version 2>&1 || true)
  if [[ $got != "$want"* ]]; then
    echo "claude --version says \"$got\", expected $want: its native binary was not installed" >&2
    exit 1
  fi
fi

cp "$versions" "$dir/.complete"
echo "installed in $((SECONDS - started)) s" >&2
echo "$dir"
