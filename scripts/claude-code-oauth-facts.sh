#!/usr/bin/env bash
# Reads Claude Code's OAuth facts (client id, authorize, token and redirect URLs, scopes, the long-lived
# login's scope and lifetime, the OAuth beta flag) out of the program npm ships as @anthropic-ai/claude-code,
# and writes them to docs/claude-code-oauth.json, the record proto/src/anthropic.rs is checked against
# (`cargo test -p sidecred-proto`). Run it now and then; when the record changes, the test says which
# constant to update.
#
#   scripts/claude-code-oauth-facts.sh              # the latest release, into docs/claude-code-oauth.json
#   scripts/claude-code-oauth-facts.sh -            # print the record instead of writing it
#   CLAUDE_CODE_VERSION=2.1.197 scripts/claude-code-oauth-facts.sh
#
# Needs npm and node. The program is minified and its names change with every release, so the facts are
# found by what surrounds them (`CLIENT_ID:"..."`, `inferenceOnly:!0,expiresIn:...`); when a release moves
# them, this script stops with the fact it could not find rather than write a guess.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/claude-code-oauth.json}
[[ "$out" == "-" || "$out" == /* ]] || out=$PWD/$out
pkg=@anthropic-ai/claude-code

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Ask for the version first and pack that exact one: a bare `npm pack` may answer from a stale cache.
version=${CLAUDE_CODE_VERSION:-$(npm view --prefer-online "$pkg" version)}
echo "claude-code-oauth-facts: Claude Code $version" >&2
mkdir launcher
npm pack --silent --prefer-online --pack-destination launcher "$pkg@$version" >/dev/null
tar xzf launcher/*.tgz -C launcher

# Older releases ship the program as cli.js; newer ones ship a launcher, and the program in one package
# per platform. The linux-x64 one is read whatever machine this runs on, so the record does not depend on it.
if [[ -f launcher/package/cli.js ]]; then
  program=launcher/package/cli.js
else
  native=$(node -e 'const p=require(process.argv[1]); const d=Object.keys(p.optionalDependencies||{}).find(n=>n.endsWith("-linux-x64")); if(!d) process.exit(1); console.log(d)' \
    "$work/launcher/package/package.json") || {
    echo "claude-code-oauth-facts: $pkg@$version has neither cli.js nor a linux-x64 package" >&2
    exit 1
  }
  mkdir native
  npm pack --silent --prefer-online --pack-destination native "$native@$version" >/dev/null
  tar xzf native/*.tgz -C native
  program=$(find native/package -maxdepth 1 -type f -name 'claude*' ! -name '*.md' | head -n 1)
  [[ -n "$program" ]] || { echo "claude-code-oauth-facts: no program in $native@$version" >&2; exit 1; }
fi

record=$(node - "$program" "$version" <<'JS'
const fs = require("fs");
const vm = require("vm");
const [program, version] = process.argv.slice(2);
const buf = fs.readFileSync(program);

function fail(what) {
  console.error(`claude-code-oauth-facts: cannot find ${what} in Claude Code ${version}; the program changed ` +
    `shape: read it by hand and update this script`);
  process.exit(1);
}
const esc = (s) => s.replace(/[$]/g, "\\$");
// The text around the first `anchor`, decoded byte for byte (the facts are ASCII).
function around(anchor, before, after, what) {
  const i = buf.indexOf(anchor);
  if (i < 0) fail(what);
  return { text: buf.toString("latin1", Math.max(0, i - before), Math.min(buf.length, i + anchor.length + after)),
           at: Math.min(i, before) };
}
function match(re, text, what) {
  const m = re.exec(text);
  if (!m) fail(what);
  return m;
}

// The end of the object literal that opens at `open`: its closing brace, skipping strings.
function literalEnd(text, open) {
  let depth = 0;
  let quote = null;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'" || c === "`") quote = c;
    else if (c === "{") depth++;
    else if (c === "}" && --depth === 0) return i + 1;
  }
  fail("the end of the OAuth endpoints object");
}

// The endpoints: one object literal, `X={BASE_API_URL:"...",...,CLIENT_ID:"...",...}`.
const configWin = around('{BASE_API_URL:"', 12000, 4000, "the OAuth endpoints (BASE_API_URL)");
const configVar = match(/([\w$]+)=$/, configWin.text.slice(0, configWin.at), "the OAuth endpoints' name")[1];
const configEnd = literalEnd(configWin.text, configWin.at);
const endpoints = vm.runInNewContext(`(${configWin.text.slice(configWin.at, configEnd)})`, {});

// The long-lived login: `claude setup-token` asks for `inferenceOnly:!0,expiresIn:<a constant>`.
const lifetimeName = match(/inferenceOnly:!0,expiresIn:([\w$]+)/,
  around("inferenceOnly:!0,expiresIn:", 0, 40, "the long-lived login (inferenceOnly)").text, "expiresIn")[1];
const lifetimeDecl = match(new RegExp(`var ${esc(lifetimeName)}=(\\d+)[;,]`), configWin.text,
  "the long-lived token's lifetime");

// The authorize URL's scopes: `X=...inferenceOnly ? [one scope] : ... : fullScopes()` then
// `searchParams.append("scope",X.join(" "))`.
const builder = around('searchParams.append("scope",', 1500, 40, "the authorize URL builder").text;
const scopeVar = match(/searchParams\.append\("scope",([\w$]+)\.join\(" "\)\)/, builder, "the scope parameter")[1];
const inferenceFlag = match(/inferenceOnly:([\w$]+)/, builder, "the inferenceOnly parameter")[1];
const scopeExpr = match(new RegExp(`[,;\\s(]${esc(scopeVar)}=([^;]+);`), builder, "the scope expression")[1];
const inferenceScopeVar = match(new RegExp(`${esc(inferenceFlag)}\\?\\[([\\w$]+)\\]`), scopeExpr,
  "the inference-only scope")[1];
// A function call in some releases, a variable in others.
const fullScopes = match(/:([\w$]+(?:\(\))?)$/, scopeExpr, "the full login's scopes")[1];

// Evaluate the declarations from the lifetime constant to the endpoints object, which define the scope
// lists, with what they call from elsewhere: the endpoints getter, and the de-duplicating helper.
const chunk = configWin.text.slice(lifetimeDecl.index, configEnd);
const dedupe = [];
for (let i = buf.indexOf("{return[...new Set("); i >= 0; i = buf.indexOf("{return[...new Set(", i + 1)) {
  const m = /function ([\w$]+)\(([\w$]+)\)$/.exec(buf.toString("latin1", Math.max(0, i - 40), i));
  const tail = buf.toString("latin1", i, i + 40);
  if (m && tail.startsWith(`{return[...new Set(${m[2]})]}`)) dedupe.push(m[1]);
}
let evaluated;
try {
  const stubs = dedupe.map((n) => `function ${n}(a){return[...new Set(a)]}`).join("\n");
  // The endpoints getter is defined after the chunk; it is whatever the chunk calls with no arguments
  // to read a setting (`get().PLUGINS_SCOPE_REGISTERED`), and stands in as returning the endpoints.
  const getters = [...new Set([...chunk.matchAll(/([\w$]+)\(\)\.[A-Z_]+/g)].map((m) => m[1]))];
  const getterStubs = getters.map((n) => `function ${n}(){return ${configVar}}`).join("\n");
  evaluated = vm.runInNewContext(
    `${stubs}\n${getterStubs}\n${chunk}\n;({full: ${fullScopes}, inference: [${inferenceScopeVar}]})`,
    {}, { timeout: 2000 });
} catch (e) {
  fail(`the scope lists (evaluating them failed: ${e.message})`);
}

const beta = match(/"(oauth-\d{4}-\d{2}-\d{2})"/, around('"oauth-20', 0, 30, "the OAuth beta flag").text,
  "the OAuth beta flag")[1];

const need = (v, what) => (typeof v === "string" && v ? v : fail(what));
const record = {
  claude_code_version: version,
  client_id: need(endpoints.CLIENT_ID, "CLIENT_ID"),
  authorize_url: need(endpoints.CLAUDE_AI_AUTHORIZE_URL, "CLAUDE_AI_AUTHORIZE_URL"),
  console_authorize_url: need(endpoints.CONSOLE_AUTHORIZE_URL, "CONSOLE_AUTHORIZE_URL"),
  token_url: need(endpoints.TOKEN_URL, "TOKEN_URL"),
  manual_redirect_uri: need(endpoints.MANUAL_REDIRECT_URL, "MANUAL_REDIRECT_URL"),
  api_base: need(endpoints.BASE_API_URL, "BASE_API_URL"),
  scopes: evaluated.full.join(" "),
  long_lived_scopes: evaluated.inference.join(" "),
  long_lived_expires_in: Number(lifetimeDecl[1]),
  oauth_beta: beta,
};
process.stdout.write(JSON.stringify(record, null, 2) + "\n");
JS
)

if [[ "$out" == "-" ]]; then
  printf '%s\n' "$record"
else
  printf '%s\n' "$record" >"$out"
  echo "claude-code-oauth-facts: wrote $out; now run: cargo test -p sidecred-proto drift" >&2
fi
