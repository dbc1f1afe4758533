#!/usr/bin/env bash
# Bundle the web console's one dependency, the Firebase JS SDK (versions pinned in package.json and
# package-lock.json here), into infra/hosting/vendor/firebase.js with esbuild. ./dev runs it before the stack and
# the tests; it does nothing when the bundle is current: made from these inputs and still the bytes made (its stamp,
# vendor/firebase.js.sha256, names both). infra/deploy.py runs it with --fresh before Firebase Hosting deploys: npm ci
# (package-lock's integrity hashes) and esbuild again, whatever a stamp says. The bundle is git-ignored, so the release
# says nothing of it: a stamp naming the inputs alone let a bundle edited or replaced after its build be deployed
# as current (attack run 124).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
fresh=0
case "${1:-}" in
  --fresh) fresh=1 ;;
  "") ;;
  *) echo "usage: $0 [--fresh]" >&2; exit 2 ;;
esac
dir=${LOCKWISE_TOOLS_HOME:-$HOME/.cache/lockwise}/console-node
out=infra/hosting/vendor/firebase.js
want=$(cat infra/console/package.json infra/console/package-lock.json infra/console/firebase-sdk.js | sha256sum | cut -d' ' -f1)
made() { echo "$want $(sha256sum "$out" | cut -d' ' -f1)"; }  # the inputs, and the bytes they made
if [ "$fresh" = 0 ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ] && [ -s "$out" ] \
  && [ "$(cat "$out.sha256" 2>/dev/null)" = "$(made)" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "the web console needs npm to bundle the Firebase JS SDK: apt-get install npm" >&2; exit 2; }
echo "bundling the Firebase JS SDK for the web console (npm ci + esbuild, versions pinned in infra/console)" >&2
mkdir -p "$dir" infra/hosting/vendor
rm -f "$out" "$out.sha256" "$dir/.stamp"
cp infra/console/package.json infra/console/package-lock.json infra/console/firebase-sdk.js "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
# bundled from $dir, beside the node_modules npm ci just made: from the checkout, esbuild looked for the SDK in every
# node_modules above infra/console first (git-ignored: an `npm install` run at the repository's root) and in NODE_PATH
# last, and bundled whatever firebase it met first (attack run 124)
(cd "$dir" && node_modules/.bin/esbuild firebase-sdk.js --bundle --format=esm --minify --log-level=warning \
  --outfile="$root/$out")
made > "$out.sha256"
echo "$want" > "$dir/.stamp"
