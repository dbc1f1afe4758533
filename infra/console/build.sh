#!/usr/bin/env bash
# Bundle the web console's one dependency, the Firebase JS SDK (versions pinned in package.json and
# package-lock.json here), into infra/hosting/vendor/firebase.js with esbuild. ./dev runs it before the stack and
# the tests, infra/deploy.py before Firebase Hosting deploys; it does nothing when the bundle is current.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${LOCKWISE_TOOLS_HOME:-$HOME/.cache/lockwise}/console-node
out=infra/hosting/vendor/firebase.js
want=$(cat infra/console/package.json infra/console/package-lock.json infra/console/firebase-sdk.js | sha256sum | cut -d' ' -f1)
if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ] && [ -s "$out" ] && [ "$(cat "$out.sha256" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "the web console needs npm to bundle the Firebase JS SDK: apt-get install npm" >&2; exit 2; }
echo "bundling the Firebase JS SDK for the web console (npm ci + esbuild, versions pinned in infra/console)" >&2
mkdir -p "$dir" infra/hosting/vendor
cp infra/console/package.json infra/console/package-lock.json "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
NODE_PATH="$dir/node_modules" "$dir/node_modules/.bin/esbuild" infra/console/firebase-sdk.js --bundle \
  --format=esm --minify --log-level=warning --outfile="$out"
echo "$want" > "$out.sha256"
echo "$want" > "$dir/.stamp"
