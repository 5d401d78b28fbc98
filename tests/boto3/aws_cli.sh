#!/usr/bin/env bash
# The AWS CLI against `blocksnap serve`: $1 is the endpoint URL, $2 the
# `aws` executable. Starts a snapshot, writes a block from a file,
# completes it, lists, reads the block back and compares bytes.
set -euo pipefail
ENDPOINT=$1
AWS=$2
export AWS_ACCESS_KEY_ID=AKIDALICE AWS_SECRET_ACCESS_KEY=alice-secret AWS_DEFAULT_REGION=us-east-1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ebs() { "$AWS" --endpoint-url "$ENDPOINT" --output json ebs "$@"; }
SNAPSHOT=$(ebs start-snapshot --volume-size 1 --description cli | python3 -c 'import json,sys; print(json.load(sys.stdin)["SnapshotId"])')
head -c 524288 /dev/urandom > "$WORK/block"
CHECKSUM=$(python3 -c 'import base64,hashlib,sys; print(base64.b64encode(hashlib.sha256(open(sys.argv[1],"rb").read()).digest()).decode())' "$WORK/block")
ebs put-snapshot-block --snapshot-id "$SNAPSHOT" --block-index 7 --block-data "$WORK/block" \
    --data-length 524288 --checksum "$CHECKSUM" --checksum-algorithm SHA256 > /dev/null
STATUS=$(ebs complete-snapshot --snapshot-id "$SNAPSHOT" --changed-blocks-count 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["Status"])')
[ "$STATUS" = completed ]
TOKEN=$(ebs list-snapshot-blocks --snapshot-id "$SNAPSHOT" | python3 -c 'import json,sys; b=json.load(sys.stdin)["Blocks"]; assert [x["BlockIndex"] for x in b] == [7]; print(b[0]["BlockToken"])')
ebs get-snapshot-block --snapshot-id "$SNAPSHOT" --block-index 7 --block-token "$TOKEN" "$WORK/back" > /dev/null
cmp "$WORK/block" "$WORK/back"
# A missing snapshot: the CLI names the error class and exits 254.
set +e
ERROR=$(ebs list-snapshot-blocks --snapshot-id snap-0123456789abcdef 2>&1)
CODE=$?
set -e
[ "$CODE" -ne 0 ]
echo "$ERROR" | grep -q ResourceNotFoundException
echo "aws cli: OK"
