#!/usr/bin/env bash
# Installs Debian's prometheus package (Prometheus and promtool) when missing: the end-to-end test of the
# metrics runs a real Prometheus, and .ci/check-monitoring.sh runs promtool on the alert rules.
# The package's post-install would start a system-wide Prometheus on :9090. Debian's invoke-rc.d asks
# /usr/sbin/policy-rc.d first; one that refuses every start (the usual container practice) keeps the
# machine as it was. It is put there only for the install, and only when none exists.
set -euo pipefail
command -v prometheus >/dev/null && command -v promtool >/dev/null && exit 0
policy=/usr/sbin/policy-rc.d
placed=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
fi
rc=0
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2; } ||
    rc=$?
if ((placed)); then rm -f "$policy"; fi
exit "$rc"
