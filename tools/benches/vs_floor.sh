#!/usr/bin/env bash
# Issue #19's comparison: the server against `loadgen --floor` (and, optionally, against an
# earlier build), alternated round by round so that the machine's noise falls on all of them.
#
#   tools/benches/vs_floor.sh [rounds] [before-loadgen]
#
# Builds the release loadgen of this checkout, then for each round and scenario runs: the
# earlier build (when given), this build, and the floor. Prints one line per run, CPU per
# delivered message in µs (server cores / delivered messages per second), and writes the raw
# JSON to bench-results/vs-floor/. "postgres" is the CPU of the backends serving the server's own
# sessions (the listener's reads, the pool's queries), not the writers'; "from commit" is the p99
# latency counted from each write's commit, which the floor (whose writes are control messages)
# does not have. Scenarios: spread (10,000 clients over 1,000 negocios,
# 1,000 events/s), low (2,000 subscribers of one negocio, 10 events/s), fanout (10,000 of one
# negocio, 10 events/s; no floor: it is for regressions), flood (10,000 of one negocio, writes as
# fast as they commit; no floor). SCENARIOS="spread low" runs only those; two more are run only
# when named: mid (600 subscribers of one negocio, 100 events/s: a large direct fan-out at a
# rate one writer thread feels) and listen (10 clients over 1,000 negocios, 1,000 events/s: what
# listening costs with next to no fan-out).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
before=${2:-}
cargo build --release -q -p citas-realtime-tools --bin loadgen
after=target/release/loadgen
out=${OUT:-bench-results/vs-floor}
mkdir -p "$out"

declare -A ARGS=(
  [spread]="--clients 10000 --negocios 1000 --rate 1000 --duration 5"
  [low]="--clients 2000 --negocios 1 --rate 10 --duration 5"
  [fanout]="--clients 10000 --negocios 1 --rate 10 --duration 5"
  [flood]="--clients 10000 --negocios 1 --flood 2 --duration 5"
  [mid]="--clients 600 --negocios 1 --rate 100 --duration 5"
  [listen]="--clients 10 --negocios 1000 --rate 1000 --duration 5"
)

run() { # label binary scenario [extra args]
  local label=$1 bin=$2 scenario=$3; shift 3
  local json="$out/$scenario-$label.json"
  # shellcheck disable=SC2086
  "$bin" ${ARGS[$scenario]} "$@" --json "$json" >"$out/$scenario-$label.log" 2>&1 || {
    echo "$scenario $label: loadgen failed, see $out/$scenario-$label.log"; return 1; }
  python3 - "$json" "$scenario" "$label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["server"]
rate = max(d["delivered_msgs_per_sec"], 1)
c = d.get("commit_ms") or {}
after = f"  from commit p99 {c['latency_after_commit_p99']:6.2f} ms" if c else ""
print(f"{sys.argv[2]:7} {sys.argv[3]:10} p50 {d['latency_ms']['p50']:7.2f} ms  p99 {d['latency_ms']['p99']:7.2f} ms"
      f"  server {s['cpu_cores']:.3f} cores  {s['cpu_cores'] * 1e6 / rate:6.2f} µs/msg"
      f"  postgres {d['postgres_for_server_cpu_cores'] or 0:.3f}  {rate:9.0f} msgs/s  lost {d['lost']}{after}")
PY
}

for r in $(seq 1 "$rounds"); do
  for scenario in ${SCENARIOS:-spread low fanout flood}; do
    [ -n "$before" ] && run "before-$r" "$before" "$scenario"
    run "after-$r" "$after" "$scenario"
    case $scenario in spread|low|mid|listen) run "floor-$r" "$after" "$scenario" --floor ;; esac
  done
done
