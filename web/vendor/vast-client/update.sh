#!/usr/bin/env bash
# Replaces the vendored @dailymotion/vast-client (the browser ES-module build
# and its licence) with a release from npm, and records it in VERSION.
#
#   bash web/vendor/vast-client/update.sh            # the version VERSION names
#   bash web/vendor/vast-client/update.sh 6.4.5      # another version
#
# Then update the pinned version in e2e/package.json (and its lockfile with
# `cd e2e && npm install --save-exact @dailymotion/vast-client@<version>`):
# the browser test checks that the vendored file is the npm build unchanged.
set -euo pipefail
cd "$(dirname "$0")"

version=${1:-$(sed -n 's|^@dailymotion/vast-client \([0-9][^ ]*\) .*|\1|p' VERSION)}
[ -n "$version" ] || { echo "no version given and none found in VERSION" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# npm checks the tarball against the registry's integrity hash.
(cd "$tmp" && npm pack --silent "@dailymotion/vast-client@$version" >/dev/null && tar xzf ./*.tgz)

cp "$tmp/package/dist/vast-client.min.js" vast-client.min.js
cp "$tmp/package/LICENSE" LICENSE
if grep -q 'sourceMappingURL' vast-client.min.js; then
  echo "vast-client.min.js $version names a source map; adtrack does not ship one" >&2
  exit 1
fi
license=$(node -p "require('$tmp/package/package.json').license")
printf '@dailymotion/vast-client %s (npm), dist/vast-client.min.js copied unmodified (an ES module;\nits one dynamic import, of @xmldom/xmldom, runs only outside a browser); %s licence (LICENSE).\n' "$version" "$license" > VERSION
echo "vendored @dailymotion/vast-client $version"
