#!/usr/bin/env bash
# A short run of each fuzz target (default 60 s; FUZZ_SECONDS to change),
# seeded with the inputs kept in fuzz/regressions. New inputs go to a
# scratch corpus; a crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
#
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the machine's stable
# toolchain take them. The targets run without a sanitizer: adtrack has no
# unsafe code of its own, and the properties checked are logical ones.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
for target in parse_event spool_segment envelope; do
  scratch=$(mktemp -d)
  cargo fuzz run --sanitizer none "$target" "$scratch" "fuzz/regressions/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 12
  rm -rf "$scratch"
done
