#!/usr/bin/env bash
# Regenerates fixtures/pg_control/<major>/{pg_control,expected.txt}: a real
# pg_control made by each major's initdb (with non-default settings on some),
# and the values PostgreSQL itself reports for it — pg_controldata where the
# install has it, else the server's pg_control_*() functions read while the
# file is exactly as captured. Run after scripts/install-postgres.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${PG_MIGRATE_PG_PREFIX:-$root/.cache/postgres}
user=${PG_MIGRATE_TEST_USER:-pgmigrate}
run() { if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi; }
psql18=$prefix/18/bin/psql

initdb_opts() {
  case $1 in
    10) echo "-k" ;;
    11) echo "--wal-segsize=8" ;;
    12) echo "--wal-segsize=4" ;;
    13) echo "-k" ;;
    14) echo "--wal-segsize=32 -k" ;;
    15) echo "-k --wal-segsize=2" ;;
    16) echo "" ;;
    17) echo "-k" ;;
    18) echo "--no-data-checksums --wal-segsize=8" ;;
  esac
}

sql_report="
select 'pg_control version number: ' || pg_control_version from pg_control_system()
union all select 'Catalog version number: ' || catalog_version_no from pg_control_system()
union all select 'Database system identifier: ' || system_identifier from pg_control_system()
union all select 'Latest checkpoint location: ' || checkpoint_lsn from pg_control_checkpoint()
union all select 'Latest checkpoint''s REDO location: ' || redo_lsn from pg_control_checkpoint()
union all select 'Latest checkpoint''s TimeLineID: ' || timeline_id from pg_control_checkpoint()
union all select 'Latest checkpoint''s PrevTimeLineID: ' || prev_timeline_id from pg_control_checkpoint()
union all select 'Latest checkpoint''s full_page_writes: ' || case when full_page_writes then 'on' else 'off' end from pg_control_checkpoint()
union all select 'Latest checkpoint''s NextXID: ' || next_xid from pg_control_checkpoint()
union all select 'Latest checkpoint''s NextOID: ' || next_oid from pg_control_checkpoint()
union all select 'Latest checkpoint''s NextMultiXactId: ' || next_multixact_id from pg_control_checkpoint()
union all select 'Latest checkpoint''s NextMultiOffset: ' || next_multi_offset from pg_control_checkpoint()
union all select 'Latest checkpoint''s oldestXID: ' || oldest_xid from pg_control_checkpoint()
union all select 'Latest checkpoint''s oldestXID''s DB: ' || oldest_xid_dbid from pg_control_checkpoint()
union all select 'Latest checkpoint''s oldestActiveXID: ' || oldest_active_xid from pg_control_checkpoint()
union all select 'Latest checkpoint''s oldestMultiXid: ' || oldest_multi_xid from pg_control_checkpoint()
union all select 'Latest checkpoint''s oldestMulti''s DB: ' || oldest_multi_dbid from pg_control_checkpoint()
union all select 'Latest checkpoint''s oldestCommitTsXid: ' || oldest_commit_ts_xid from pg_control_checkpoint()
union all select 'Latest checkpoint''s newestCommitTsXid: ' || newest_commit_ts_xid from pg_control_checkpoint()
union all select 'Minimum recovery ending location: ' || min_recovery_end_lsn from pg_control_recovery()
union all select 'Min recovery ending loc''s timeline: ' || min_recovery_end_timeline from pg_control_recovery()
union all select 'Maximum data alignment: ' || max_data_alignment from pg_control_init()
union all select 'Database block size: ' || database_block_size from pg_control_init()
union all select 'Blocks per segment of large relation: ' || blocks_per_segment from pg_control_init()
union all select 'WAL block size: ' || wal_block_size from pg_control_init()
union all select 'Bytes per WAL segment: ' || bytes_per_wal_segment from pg_control_init()
union all select 'Maximum length of identifiers: ' || max_identifier_length from pg_control_init()
union all select 'Maximum columns in an index: ' || max_index_columns from pg_control_init()
union all select 'Maximum size of a TOAST chunk: ' || max_toast_chunk_size from pg_control_init()
union all select 'Size of a large-object chunk: ' || large_object_chunk_size from pg_control_init()
union all select 'Float8 argument passing: ' || case when float8_pass_by_value then 'by value' else 'by reference' end from pg_control_init()
union all select 'Data page checksum version: ' || data_page_checksum_version from pg_control_init()
"

majors=("$@"); [ ${#majors[@]} -gt 0 ] || majors=(10 11 12 13 14 15 16 17 18)
for major in "${majors[@]}"; do
  bin=$prefix/$major/bin
  work=$(mktemp -d /tmp/pgm-golden.XXXXXX); chmod 0700 "$work"
  [ "$(id -u)" = 0 ] && chown "$user" "$work"
  # shellcheck disable=SC2046
  run "$bin/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 $(initdb_opts "$major") >/dev/null
  out=$root/fixtures/pg_control/$major
  mkdir -p "$out"
  if [ -x "$bin/pg_controldata" ]; then
    cp "$work/data/global/pg_control" "$out/pg_control"
    run "$bin/pg_controldata" "$work/data" | grep -v -e '^pg_control last modified' -e "checkpoint:$" -e 'Mock authentication nonce' \
      | grep -v "Time of latest checkpoint" | sed 's/:  */: /' > "$out/expected.txt"
  else
    report=$sql_report
    # 10 … 12 still record how float4 is passed.
    if [ "$major" -le 12 ]; then
      report="$report union all select 'Float4 argument passing: ' || case when float4_pass_by_value then 'by value' else 'by reference' end from pg_control_init()"
    fi
    run "$bin/pg_ctl" -D "$work/data" -w -l "$work/log" -o "-c listen_addresses='' -c unix_socket_directories='$work' -p 54398" start >/dev/null
    # The functions read the file from disk; capture it right after asking.
    run "$psql18" -h "$work" -p 54398 -U postgres -d postgres -XAt -c "$report" > "$out/expected.txt"
    cp "$work/data/global/pg_control" "$out/pg_control"
    run "$psql18" -h "$work" -p 54398 -U postgres -d postgres -XAt -c "$report" | cmp - "$out/expected.txt"
    echo "Database cluster state: in production" >> "$out/expected.txt"
    run "$bin/pg_ctl" -D "$work/data" -w -m fast stop >/dev/null
  fi
  rm -rf "$work"
  echo "fixtures/pg_control/$major: $(wc -l < "$out/expected.txt") values"
done
