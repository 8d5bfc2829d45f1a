#!/usr/bin/env bash
# What the server executes per event it reads and delivers, in instructions: steadier than
# loadgen's CPU figures, which swing by tens of percent from run to run.
#
#   tools/benches/listen_instructions.sh [loadgen ...]   (default: this checkout's release loadgen)
#
# For each loadgen given, runs the server under valgrind's callgrind twice, with 10 clients over
# 10 negocios (each event goes to one client) for 10 s, at 100 and then 300 events/s, and prints
# the difference in the server's instructions divided by the difference in events: what one
# more event costs the listener's read, the fan-out and one direct write, without what starting,
# connecting and idling cost. The count still depends on how the threads interleave (how often
# notifications arrive while a read is in flight, how often a task is polled): single runs of one
# binary differ by up to 5 %, so each binary is counted REPEAT times (default 3), alternating
# with the others, and the median is printed. Needs valgrind and what loadgen needs
# (PostgreSQL's server binaries). Takes about a minute per binary and repetition.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release -q -p citas-realtime-tools --bin loadgen
  bins=(target/release/loadgen)
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Instructions the server executed, and the events it read, at `rate` events/s.
count() { # binary rate tag
  local bin=$1 rate=$2 tag=$3
  LOADGEN_SERVER_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$out/cg-$tag-$rate" \
    "$bin" --clients 10 --negocios 10 --rate "$rate" --duration 10 --json "$out/$tag-$rate.json" \
    >"$out/$tag-$rate.log" 2>&1 || { cat "$out/$tag-$rate.log" >&2; return 1; }
  local instructions writes
  instructions=$(sed -n 's/^summary: //p' "$out/cg-$tag-$rate")
  writes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["writes"])' "$out/$tag-$rate.json")
  echo "$instructions $writes"
}

repeat=${REPEAT:-3}
declare -A per_event
for r in $(seq 1 "$repeat"); do
  for i in "${!bins[@]}"; do
    read -r i1 e1 < <(count "${bins[$i]}" 100 "$i")
    read -r i2 e2 < <(count "${bins[$i]}" 300 "$i")
    per_event[$i]+="$(( (i2 - i1) / (e2 - e1) )) "
  done
done
for i in "${!bins[@]}"; do
  python3 - "${bins[$i]}" ${per_event[$i]} <<'PY'
import statistics, sys
bin, counts = sys.argv[1], [int(c) for c in sys.argv[2:]]
print(f"{bin}: {statistics.median(counts):,.0f} instructions per event "
      f"(median of {len(counts)}: {', '.join(f'{c:,}' for c in counts)})")
PY
done
