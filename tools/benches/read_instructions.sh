#!/usr/bin/env bash
# What one read of the event log costs PostgreSQL, in instructions of the backend that serves it:
# repeatable where read_cost's CPU times swing with the machine.
#
#   tools/benches/read_instructions.sh [SQL_FILE ...]   (default: this build's read)
#
# Runs read_cost (see tools/src/bin/read_cost.rs) with PostgreSQL's server under valgrind's
# callgrind, twice per statement (1,000 and then 3,000 reads, each counted twice: a warm-up round
# and one measured), and prints the backend's instructions per read: the difference of the two
# runs divided by the 4,000 extra reads, so connecting, installing and writing the events cancel
# out. A statement takes $1 (the cursor) and $2 (the batch) as the listener's read does. Needs
# valgrind and PostgreSQL's server binaries ($PG_BIN, pg_config --bindir, or
# /usr/lib/postgresql/*/bin). About 40 s per statement.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
real=${PG_BIN:-}
[ -z "$real" ] && command -v pg_config >/dev/null && real=$(pg_config --bindir)
[ -x "$real/postgres" ] || real=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$real/postgres" ] || { echo "PostgreSQL server binaries not found (set PG_BIN)" >&2; exit 1; }
cargo build --release -q -p citas-realtime-tools --bin read_cost
read_cost=$PWD/target/release/read_cost

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -p "$work/bin" "$work/out"
chmod 777 "$work/out" # the server runs as postgres when we are root
# Every server binary as it is, but `postgres` (and so each backend it forks) under callgrind.
for f in "$real"/*; do ln -s "$f" "$work/bin/"; done
rm "$work/bin/postgres"
cat >"$work/bin/postgres" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$work/out/pg.%p "$real/postgres" "\$@"
EOF
chmod 755 "$work/bin/postgres"

# The most instructions any one process of a run executed: the backend that served the reads.
count() { # reads [SQL_FILE]
  rm -f "$work"/out/pg.*
  PG_BIN=$work/bin "$read_cost" --reads "$1" --rounds 1 "${@:2}" >"$work/log" 2>&1 \
    || { cat "$work/log" >&2; return 1; }
  # The backend writes its profile as it exits, after read_cost has.
  for _ in $(seq 1 100); do
    [ -n "$(ls "$work"/out/pg.* 2>/dev/null)" ] && ! pgrep -f "$work/bin" >/dev/null && break
    sleep 0.1
  done
  for f in "$work"/out/pg.*; do sed -n 's/^summary: //p' "$f"; done | sort -n | tail -1
}

files=("$@")
[ ${#files[@]} -eq 0 ] && files=("")
for f in "${files[@]}"; do
  # shellcheck disable=SC2086
  a=$(count 1000 $f)
  # shellcheck disable=SC2086
  b=$(count 3000 $f)
  echo "${f:-this build's read}: $(((b - a) / 4000)) instructions of PostgreSQL per read"
done
