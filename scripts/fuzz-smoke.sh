#!/usr/bin/env bash
# A short smoke run of every fuzz target in fuzz/ (see fuzz/README.md): each runs for a few
# seconds from its committed seeds. Prints one line per target with its executions and fails
# when any target crashes (the input is kept in fuzz/artifacts/<target>/).
#
# cargo-fuzz is installed into target/tools when missing; everything it builds and writes stays
# in this repository (target/tools, fuzz/target, fuzz/artifacts).
#
#   SHARDGATE_FUZZ_SECS   seconds per target (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SHARDGATE_FUZZ_SECS:-4}
tools=$PWD/target/tools
cargo_fuzz=$tools/bin/cargo-fuzz
if [[ ! -x $cargo_fuzz ]]; then
  echo "fuzz: installing cargo-fuzz into target/tools"
  cargo install cargo-fuzz --version =0.13.2 --locked --root "$tools" --target-dir "$tools/build"
fi
# cargo-fuzz's sanitizer flags (-Zsanitizer=address) are unstable compiler flags: the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1. Only the fuzz build sees it.
export RUSTC_BOOTSTRAP=1

cd fuzz
"$cargo_fuzz" build
failed=0
for target in $("$cargo_fuzz" list); do
  scratch=target/smoke/$target
  rm -rf "$scratch"
  mkdir -p "$scratch"
  log=target/smoke/$target.log
  if "$cargo_fuzz" run "$target" "$scratch" "seeds/$target" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log")
    echo "fuzz $target: ${runs:-?} executions in ${secs}s, no crash"
  else
    failed=1
    echo "fuzz $target: CRASHED (fuzz/$log, input in fuzz/artifacts/$target/)"
    tail -n 40 "$log"
  fi
done
exit "$failed"
