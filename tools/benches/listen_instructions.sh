#!/usr/bin/env bash
# What the server executes per event it reads and delivers, in instructions: repeatable where
# loadgen's CPU figures swing by tens of percent from run to run.
#
#   tools/benches/listen_instructions.sh [loadgen ...]   (default: this checkout's release loadgen)
#
# For each loadgen given, runs the server under valgrind's callgrind twice, with 10 clients over
# 10 negocios (each event goes to one client) for 10 s, at 100 and then 300 events/s, and prints
# the difference in the server's instructions divided by the difference in events: what one
# more event costs the listener's read, the fan-out and one direct write, without what starting,
# connecting and idling cost. Two runs of the same binary agree to within a fraction of a
# percent. Needs valgrind and what loadgen needs (PostgreSQL's server binaries). Takes about
# two minutes per binary.
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

for i in "${!bins[@]}"; do
  bin=${bins[$i]}
  read -r i1 e1 < <(count "$bin" 100 "$i")
  read -r i2 e2 < <(count "$bin" 300 "$i")
  python3 - "$bin" "$i1" "$e1" "$i2" "$e2" <<'PY'
import sys
bin, i1, e1, i2, e2 = sys.argv[1], *map(int, sys.argv[2:])
print(f"{bin}: {(i2 - i1) / (e2 - e1):,.0f} instructions per event "
      f"({e1} events: {i1:,}; {e2} events: {i2:,})")
PY
done
