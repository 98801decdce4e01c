#!/usr/bin/env bash
# Puts the IAB's VAST 4.2 schema at target/vast/vast_4.2.xsd for the test
# that validates adtrack's VAST documents (tests/api/vast.rs).
#
# The schema is not in this repository: the licence of the IAB's repository
# (github.com/InteractiveAdvertisingBureau/vast, LICENSE) is a disclaimer of
# warranties that grants no right to copy or redistribute its files. It is
# fetched from a pinned commit and checked against its SHA-256, so a changed
# file fails here instead of changing what the test checks.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=ec2a7cebd2c451a5d482a83f2ba47afaecf115bd
sha256=4768cdea609af2c80b4503a84eae6ee18cee299316e11816de9eac24598308c2
dest=target/vast/vast_4.2.xsd

if [ -f "$dest" ] && echo "$sha256  $dest" | sha256sum -c --quiet 2>/dev/null; then
  exit 0
fi
mkdir -p "$(dirname "$dest")"
curl -fsSL --retry 3 -o "$dest.tmp" \
  "https://raw.githubusercontent.com/InteractiveAdvertisingBureau/vast/$commit/vast_4.2.xsd"
echo "$sha256  $dest.tmp" | sha256sum -c --quiet
mv "$dest.tmp" "$dest"
