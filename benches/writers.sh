#!/usr/bin/env bash
# The many-writers benchmark (issue 17): 1, 2 and 4 `blocksnap backup`
# processes at once, each with its own local directory, into one bucket
# store in SeaweedFS on loopback ($BLOCKSNAP_WEED, else
# target/boto3-venv/bin/weed, as the test command installs it). Writer w
# backs up an image of MIB MiB (default 512) whose first half is the same
# in every writer and whose second half is its own (VM-like blocks from
# examples/vm_image at different offsets). Reports per run: wall time,
# aggregate MiB/s of image, the commits that lost the head race (and were
# redone), the requests sent, the bytes stored before and after
# `gc --live-threshold 1` (the difference: data two writers stored twice
# within one refresh window), and what one writer stores backing up the
# same images one after another.
#
#   benches/writers.sh [MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-512}
HALF=$((MIB / 2))
cargo build --release --quiet --bin blocksnap --example vm_image
BIN=$PWD/target/release/blocksnap
GEN=$PWD/target/release/examples/vm_image
WEED=${BLOCKSNAP_WEED:-$PWD/target/boto3-venv/bin/weed}
AWS_CLI=${BLOCKSNAP_AWS_CLI:-$PWD/target/boto3-venv/bin/aws}
[ -x "$WEED" ] && [ -x "$AWS_CLI" ] || { echo "needs weed and the AWS CLI (run scripts/test once)" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-writers.XXXXXX")
WEED_PID=
cleanup() {
    [ -z "$WEED_PID" ] || kill "$WEED_PID" 2> /dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP PIPE
cd "$WORK"

# One pool of VM-like blocks: the shared half, then each writer's own.
"$GEN" create pool.img $((HALF * 5))
for w in 0 1 2 3; do
    dd if=pool.img of="w$w.img" bs=1M count="$HALF" status=none
    dd if=pool.img of="w$w.img" bs=1M skip=$((HALF * (w + 1))) seek="$HALF" count="$HALF" \
        conv=notrunc status=none
done
rm pool.img

mkdir -p weed
echo '{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' > weed.json
PORTS=$(python3 -c 'import socket
s=[socket.socket() for _ in range(14)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
set -- $PORTS
"$WEED" mini -dir=weed -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config=weed.json -admin.ui=false \
    -webdav=false -master.telemetry=false -master.volumeSizeLimitMB=64 -volume.max=256 \
    -s3.port="$1" -s3.port.grpc="$2" -master.port="$3" \
    -master.port.grpc="$4" -volume.port="$5" -volume.port.grpc="$6" -filer.port="$7" \
    -filer.port.grpc="$8" -admin.port="$9" -admin.port.grpc="${10}" -s3.port.iceberg="${11}" \
    -s3.port.lance="${12}" -metricsPort="${13}" -s3.metricsPort="${14}" > weed.log 2>&1 &
WEED_PID=$!
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$1
until "$AWS_CLI" s3 mb s3://bench > /dev/null 2>&1; do sleep 0.3; done

stored() {
    BLOCKSNAP_STORE=$1 BLOCKSNAP_CACHE=$WORK/fresh-$RANDOM "$BIN" --quiet stats --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["StoredBytes"])'
}

printf '%-8s %8s %10s %6s %12s %12s %12s\n' writers wall MiB/s races stored stored-gc twice
for writers in 1 2 4; do
    store=s3://bench/w$writers
    cat w*.img > /dev/null
    sync
    start=$(date +%s.%N)
    pids=()
    for w in $(seq 0 $((writers - 1))); do
        BLOCKSNAP_STORE=$store BLOCKSNAP_CACHE=$WORK/cache-$writers-$w \
            "$BIN" backup "w$w.img" > "id-$writers-$w" 2> "err-$writers-$w" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    end=$(date +%s.%N)
    races=$(sed -n 's/.*; \([0-9]*\) commit races lost/\1/p' err-$writers-* | awk '{ s += $1 } END { print s + 0 }')
    before=$(stored "$store")
    BLOCKSNAP_STORE=$store BLOCKSNAP_CACHE=$WORK/gc-$writers "$BIN" --quiet gc --live-threshold 1 > /dev/null
    after=$(stored "$store")
    awk -v n="$writers" -v s="$start" -v e="$end" -v m="$MIB" -v r="$races" -v b="$before" -v a="$after" \
        'BEGIN { printf "%-8d %7.2fs %10.0f %6d %12d %12d %12d\n", n, e - s, n * m / (e - s), r, b, a, b - a }'
    sed -n 's/^bucket requests: /  requests per backup: /p' err-$writers-0
done

# One writer, the same four images one after another.
store=s3://bench/alone
for w in 0 1 2 3; do
    BLOCKSNAP_STORE=$store BLOCKSNAP_CACHE=$WORK/cache-alone "$BIN" --quiet backup "w$w.img" > /dev/null
done
echo "one writer, the same 4 images in sequence: $(stored "$store") bytes stored"
