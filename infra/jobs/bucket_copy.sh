#!/bin/sh
# Copies backups out of the cluster, to the S3 bucket the stack names, with the aws CLI (the backup upload image).
#
#   bucket_copy.sh dumps     upload the dumps in BACKUP_DIR to s3://BUCKET/DUMPS_PREFIX (dated objects, never replaced)
#   bucket_copy.sh data      mirror DATA_DIR to s3://BUCKET/DATA_PREFIX (`aws s3 sync --delete`; the bucket's
#                            versions keep what a day replaced or deleted); SQLite files are left out: they are not
#                            consistent mid-write (the snapshots, or the PostgreSQL dumps, cover conversations)
#   bucket_copy.sh restore-data   the reverse of `data`, into DATA_DIR (docs/operations/backups.md)
#
# The bucket is made outside the program, so before anything is written the job checks what retention depends on:
# versioning is on, and lifecycle rules expire the dumps, and the data files replaced or deleted, after exactly
# RETENTION_DAYS (the `backups` stack output spells both rules). A bucket without them fails the job, naming what is
# missing. Credentials come from the pod's IAM role (IRSA or Pod Identity); AWS_REGION is the bucket's.
set -eu
: "${BUCKET:?is not set}" "${AWS_REGION:?is not set}"
what=${1:?usage: bucket_copy.sh dumps|data|restore-data}
log() { echo "bucket-copy: $*"; }
fail() { echo "bucket-copy: $*" >&2; exit 1; }

rule_count() {  # rules that are Enabled, cover $1 (their prefix is a prefix of it) and match the JMESPath test $2
  aws s3api get-bucket-lifecycle-configuration --bucket "$BUCKET" --output text \
    --query "length(Rules[?Status=='Enabled' && starts_with('$1', Filter.Prefix || Prefix || '') && $2])" 2>/dev/null || echo 0
}

check_bucket() {  # $1: the key prefix, $2: the JMESPath test its rule must pass, $3: what that rule is
  : "${RETENTION_DAYS:?is not set}"
  versioning=$(aws s3api get-bucket-versioning --bucket "$BUCKET" --query Status --output text) ||
    fail "cannot read s3://$BUCKET's versioning (does the bucket exist, in $AWS_REGION, and may this role read it?)"
  [ "$versioning" = "Enabled" ] || fail "s3://$BUCKET must have versioning Enabled, it is '$versioning'"
  [ "$(rule_count "$1" "$2")" -ge 1 ] ||
    fail "s3://$BUCKET has no enabled lifecycle rule for $1 that $3 after $RETENTION_DAYS days; apply the lifecycle \
in \`pulumi stack output backups --json\`"
}

case "$what" in
  dumps)
    : "${BACKUP_DIR:?is not set}" "${DUMPS_PREFIX:?is not set}"
    check_bucket "$DUMPS_PREFIX" "Expiration.Days==\`$RETENTION_DAYS\`" "expires dumps"
    found=0
    for dump in "$BACKUP_DIR"/clawbot-*.dump; do
      [ -e "$dump" ] || continue
      name=$(basename "$dump")
      aws s3 cp "$dump" "s3://$BUCKET/$DUMPS_PREFIX$name" --only-show-errors
      found=$((found + 1))
      log "uploaded $name to s3://$BUCKET/$DUMPS_PREFIX$name"
    done
    [ "$found" -gt 0 ] || fail "no dump in $BACKUP_DIR to upload"
    ;;
  data)
    : "${DATA_DIR:?is not set}" "${DATA_PREFIX:?is not set}"
    check_bucket "$DATA_PREFIX" "NoncurrentVersionExpiration.NoncurrentDays==\`$RETENTION_DAYS\`" "expires replaced files"
    aws s3 sync "$DATA_DIR" "s3://$BUCKET/$DATA_PREFIX" --delete --only-show-errors --no-follow-symlinks \
      --exclude '*.sqlite3' --exclude '*.sqlite3-*' --exclude 'lost+found/*' --exclude 'dev-keys/*'
    log "mirrored $DATA_DIR to s3://$BUCKET/$DATA_PREFIX"
    ;;
  restore-data)
    : "${DATA_DIR:?is not set}" "${DATA_PREFIX:?is not set}"
    aws s3 sync "s3://$BUCKET/$DATA_PREFIX" "$DATA_DIR" --only-show-errors
    log "restored s3://$BUCKET/$DATA_PREFIX into $DATA_DIR"
    ;;
  *) fail "unknown mode '$what' (dumps, data or restore-data)" ;;
esac
