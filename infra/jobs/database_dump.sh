#!/bin/sh
# Dumps the conversation database whose URL is in the file DATABASE_URL_FILE (a mounted Secret key) into BACKUP_DIR,
# in pg_dump's custom format for pg_restore, and keeps the newest RETENTION dumps. A dump gets its final name only once pg_dump has finished, so a failed run never counts as a
# backup and never pushes a good one out. Names sort by time: clawbot-YYYYmmddTHHMMSSZ.dump.
set -eu
: "${DATABASE_URL_FILE:?is not set}" "${BACKUP_DIR:?is not set}" "${RETENTION:?is not set}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
partial="$BACKUP_DIR/.clawbot-$stamp.dump.partial"
trap 'rm -f "$partial"' EXIT
pg_dump --format=custom --no-owner --no-privileges --file="$partial" --dbname="$(cat "$DATABASE_URL_FILE")"
mv "$partial" "$BACKUP_DIR/clawbot-$stamp.dump"
echo "database-dump: wrote clawbot-$stamp.dump ($(wc -c < "$BACKUP_DIR/clawbot-$stamp.dump") bytes)"
ls -1 "$BACKUP_DIR" | grep -E '^clawbot-[0-9]{8}T[0-9]{6}Z\.dump$' | sort -r | tail -n +$((RETENTION + 1)) |
  while read -r old; do
    rm -f -- "$BACKUP_DIR/$old"
    echo "database-dump: removed $old (keeping the newest $RETENTION)"
  done
