#!/usr/bin/env bash
# codex-shaped: Codex's turn shape — a generate:false warm-up with the full ~37 KB frame, then the
# real turn chained to it with previous_response_id — direct vs nginx vs shardgate, as steady.sh.
#   perf/codex-shaped.sh [steady.sh options]
exec "$(dirname "$0")/steady.sh" --name codex-shaped --warmup --payload 37000 "$@"
