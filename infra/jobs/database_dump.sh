#!/bin/sh
# Dumps the conversation database into BACKUP_DIR in pg_dump's custom format (for pg_restore) and keeps the newest
# RETENTION dumps there. A dump gets its final name only once pg_dump has finished, so a failed run never counts as a
# backup and never pushes a good one out. Names sort by time: clawbot-YYYYmmddTHHMMSSZ.dump.
#
# The password never reaches pg_dump's argv or environment: DATABASE_DSN_FILE holds the connection URL without it,
# DATABASE_PASSFILE a libpq password file line (both mounted from a Secret). libpq ignores a password file that
# group or others may read, and a Secret volume's files are group-readable (fsGroup), so a private copy is used.
set -eu
: "${DATABASE_DSN_FILE:?is not set}" "${DATABASE_PASSFILE:?is not set}" "${BACKUP_DIR:?is not set}" "${RETENTION:?is not set}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
partial="$BACKUP_DIR/.clawbot-$stamp.dump.partial"
umask 077
PGPASSFILE=$(mktemp "${TMPDIR:-/tmp}/pgpass.XXXXXX")
export PGPASSFILE
trap 'rm -f "$partial" "$PGPASSFILE"' EXIT
cat "$DATABASE_PASSFILE" > "$PGPASSFILE"
pg_dump --format=custom --no-owner --no-privileges --no-password --file="$partial" --dbname="$(cat "$DATABASE_DSN_FILE")"
mv "$partial" "$BACKUP_DIR/clawbot-$stamp.dump"
echo "database-dump: wrote clawbot-$stamp.dump ($(wc -c < "$BACKUP_DIR/clawbot-$stamp.dump") bytes)"
ls -1 "$BACKUP_DIR" | grep -E '^clawbot-[0-9]{8}T[0-9]{6}Z\.dump$' | sort -r | tail -n +$((RETENTION + 1)) |
  while read -r old; do
    rm -f -- "$BACKUP_DIR/$old"
    echo "database-dump: removed $old (keeping the newest $RETENTION)"
  done
