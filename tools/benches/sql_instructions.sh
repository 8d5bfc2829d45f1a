#!/usr/bin/env bash
# What the triggers cost a writer, in instructions: repeatable where sql_overhead's timings are
# not (this machine's speed swings by tens of percent within minutes).
#
#   tools/benches/sql_instructions.sh [SQL_FILE[+SQL_FILE...] ...]   (default: sql/install.sql; paths from the repository root)
#
#   tools/benches/sql_instructions.sh sql/install.sql sql/install.sql+tools/benches/records_six.sql
#                                          (records off against records on, six columns)
#
# Each SQL_FILE (or +-joined files, applied in order) is installed over the example schema in a
# database of its own, beside a bare one,
# in a private PostgreSQL cluster. Each workload then runs in a single-user backend
# (`postgres --single`) under valgrind's callgrind, and again with an empty workload; the
# difference, divided by the statements or rows, is what the backend executes per commit or per
# row. The writer's backend only: the client, the network and the listener are not counted.
# Needs valgrind and PostgreSQL's server binaries ($PG_BIN, pg_config --bindir, or
# /usr/lib/postgresql/*/bin). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."

files=("$@")
[ ${#files[@]} -eq 0 ] && files=(sql/install.sql)
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
bin=${PG_BIN:-}
[ -z "$bin" ] && command -v pg_config >/dev/null && bin=$(pg_config --bindir)
[ -x "$bin/initdb" ] || bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL server binaries not found (set PG_BIN)" >&2; exit 1; }

work=$(mktemp -d)
trap 'as_pg "$bin/pg_ctl -D $work/data stop -m immediate" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
chmod 755 "$work"
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$1"; else bash -c "$1"; fi
}
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
settings="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
as_pg "$bin/initdb -D $work/data -A trust -U postgres >/dev/null"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$bin/pg_ctl -D $work/data -o '-p $port -k $work -c listen_addresses= $settings' -l $work/log -w start >/dev/null"
psql_db() {
  as_pg "PGOPTIONS='-c client_min_messages=warning' psql -h $work -p $port -U postgres -qAt -v ON_ERROR_STOP=1 -d $1" >/dev/null
}

dbs=(bare)
echo "create database bare" | psql_db postgres
psql_db bare < sql/example_schema.sql
for i in "${!files[@]}"; do
  db="v$i"
  dbs+=("$db")
  echo "create database $db" | psql_db postgres
  psql_db "$db" < sql/example_schema.sql
  IFS=+ read -ra parts <<< "${files[$i]}"
  for part in "${parts[@]}"; do psql_db "$db" < "$part"; done
done
as_pg "$bin/pg_ctl -D $work/data stop -m fast >/dev/null"

# The workloads, and the empty one their start-up cost is measured with.
echo "select 1;" > "$work/empty.sql"
python3 - "$work" <<'EOF'
import sys
w = sys.argv[1]
def cita(i):
    return f"'00000000-0000-4000-8000-{i:012x}'"
values = "current_date, '10:00', '10:30', 'c'"
open(f"{w}/simple.sql", "w").write("".join(
    f"insert into citas (id, negocio_id, fecha, hora_inicio, hora_fin, cliente_id) "
    f"values ({cita(i)}, 'n{i % 100}', {values});\n" for i in range(1000)))
open(f"{w}/prepared.sql", "w").write(
    "prepare p(uuid, text) as insert into citas (id, negocio_id, fecha, hora_inicio, hora_fin, "
    f"cliente_id) values ($1, $2, {values});\n"
    + "".join(f"execute p({cita(1000 + i)}, 'n{i % 100}');\n" for i in range(1000)))
open(f"{w}/single_update.sql", "w").write("".join(
    f"update citas set estado = 'confirmada' where id = {cita(i)};\n" for i in range(1000)))
open(f"{w}/single_delete.sql", "w").write("".join(
    f"delete from citas where id = {cita(i)};\n" for i in range(1000)))
open(f"{w}/bulk_insert.sql", "w").write(
    "insert into citas (negocio_id) select 'n' || (g % 100) from generate_series(1, 10000) g;\n")
open(f"{w}/bulk_update.sql", "w").write("update citas set estado = 'confirmada';\n")
open(f"{w}/bulk_delete.sql", "w").write("delete from citas;\n")
open(f"{w}/reset.sql", "w").write("delete from citas;\n")
EOF
chmod 644 "$work"/*.sql

count() { # db workload -> instructions
  as_pg "valgrind --tool=callgrind --callgrind-out-file=$work/cg.out $bin/postgres --single -D $work/data $settings $1 < $work/$2.sql >/dev/null 2>&1"
  grep -o 'summary: [0-9]*' "$work/cg.out" | grep -o '[0-9]*'
}

declare -A per
for db in "${dbs[@]}"; do
  base=$(count "$db" empty)
  # Single-row commits first (1,000 each), then the bulk statements on 10,000 fresh rows.
  per[$db,simple]=$(( ($(count "$db" simple) - base) / 1000 ))
  per[$db,prepared]=$(( ($(count "$db" prepared) - base) / 1000 ))
  per[$db,single_update]=$(( ($(count "$db" single_update) - base) / 1000 ))
  per[$db,single_delete]=$(( ($(count "$db" single_delete) - base) / 1000 ))
  count "$db" reset >/dev/null
  per[$db,bulk_insert]=$(( ($(count "$db" bulk_insert) - base) / 10000 ))
  per[$db,bulk_update]=$(( ($(count "$db" bulk_update) - base) / 10000 ))
  per[$db,bulk_delete]=$(( ($(count "$db" bulk_delete) - base) / 10000 ))
done

printf '%-40s %12s' "instructions in the writer's backend" "bare"
for i in "${!files[@]}"; do printf ' %24s' "$(basename "${files[$i]}")"; done
echo
for w in simple:"single-row INSERT commit (simple)" prepared:"single-row INSERT commit (prepared)" \
         single_update:"single-row UPDATE of estado commit" single_delete:"single-row DELETE commit" \
         bulk_insert:"INSERT ... SELECT, per row" bulk_update:"UPDATE, per row" bulk_delete:"DELETE, per row"; do
  key=${w%%:*}; label=${w#*:}
  printf '%-40s %12d' "$label" "${per[bare,$key]}"
  for db in "${dbs[@]:1}"; do
    printf ' %12d (%5.2fx)    ' "${per[$db,$key]}" "$(python3 -c "print(${per[$db,$key]}/${per[bare,$key]})")"
  done
  echo
done
