#!/usr/bin/env bash
# The AWS CLI's EC2 snapshot commands against `blocksnap serve`: $1 is the
# endpoint URL, $2 the `aws` executable. Makes two snapshots through the
# EBS commands, then describes (ids, owners, tag filters), waits for
# completion, copies, tags, lists tags and deletes through the EC2
# commands on the same port.
set -euo pipefail
ENDPOINT=$1
AWS=$2
export AWS_ACCESS_KEY_ID=AKIDALICE AWS_SECRET_ACCESS_KEY=alice-secret AWS_DEFAULT_REGION=us-east-1
ebs() { "$AWS" --endpoint-url "$ENDPOINT" --output json ebs "$@"; }
ec2() { "$AWS" --endpoint-url "$ENDPOINT" --output text ec2 "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
start() { ebs start-snapshot --volume-size 1 "$@" | json '["SnapshotId"]'; }
WEB=$(start --description web --tags Key=Name,Value=web-1)
DB=$(start --tags Key=Name,Value=db-1)
ebs complete-snapshot --snapshot-id "$WEB" --changed-blocks-count 0 > /dev/null
# Pending until completed; the waiter returns once it is.
[ "$(ec2 describe-snapshots --snapshot-ids "$DB" --query 'Snapshots[0].State')" = pending ]
( sleep 2; ebs complete-snapshot --snapshot-id "$DB" --changed-blocks-count 0 > /dev/null ) &
ec2 wait snapshot-completed --snapshot-ids "$WEB"
ec2 wait snapshot-completed --snapshot-ids "$DB"
wait
[ "$(ec2 describe-snapshots --snapshot-ids "$DB" --query 'Snapshots[0].State')" = completed ]
[ "$(ec2 describe-snapshots --owner-ids self --filters Name=tag:Name,Values='web*' --query 'Snapshots[].SnapshotId')" = "$WEB" ]
[ "$(ec2 describe-snapshots --filters Name=description,Values=web --query 'Snapshots[0].Description')" = web ]
COPY=$(ec2 copy-snapshot --source-snapshot-id "$WEB" --source-region us-east-1 --description copied --query SnapshotId)
[ "$(ec2 describe-snapshots --snapshot-ids "$COPY" --query 'Snapshots[0].[State,Description]')" = "completed	copied" ]
[ "$(ec2 describe-tags --filters Name=resource-id,Values="$DB" --query 'Tags[0].[Key,Value]')" = "Name	db-1" ]
ec2 create-tags --resources "$DB" "$COPY" --tags Key=team,Value=storage Key=Name,Value=renamed
[ "$(ec2 describe-snapshots --filters Name=tag:team,Values=storage --query 'length(Snapshots)')" = 2 ]
ec2 delete-tags --resources "$COPY" --tags Key=team
[ "$(ec2 describe-tags --filters Name=key,Values=team --query 'Tags[].ResourceId')" = "$DB" ]
[ "$(ec2 describe-snapshots --snapshot-ids "$DB" --query 'Snapshots[0].Tags[?Key==`Name`].Value')" = renamed ]
ec2 delete-snapshot --snapshot-id "$WEB"
set +e
ERROR=$(ec2 describe-snapshots --snapshot-ids "$WEB" 2>&1)
CODE=$?
set -e
[ "$CODE" -ne 0 ]
echo "$ERROR" | grep -q InvalidSnapshot.NotFound
[ "$(ec2 describe-snapshots --owner-ids self --query 'length(Snapshots)')" = 2 ]
echo "aws cli ec2: OK"
