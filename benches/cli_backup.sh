#!/usr/bin/env bash
# The command-line benchmark of the CLI issue: a VM-like image (default
# 2 GiB: about 30% zero blocks, 30% text-like, 20% moderately compressible,
# 20% random), a full backup, 5% of the blocks rewritten, incremental
# backups by hash comparison and by a changed-block list, and a restore.
# Then the export/import issue's steps: the full snapshot exported to a
# directory and imported into a new store, the 5% delta likewise, and the
# same through s3s-fs on loopback when it is installed
# ($BLOCKSNAP_S3S_FS, else target/s3s-fs/bin/s3s-fs, as the test command
# installs it). Then the object-store issue's steps: full and incremental
# backups into a store in SeaweedFS on loopback and a restore from a cold
# cache, with the requests each sent and the objects stored, and restic's
# S3 backend into the same server.
# Reports time, MiB/s of image and peak memory (RSS) per step, and stored
# bytes against compressing each distinct non-zero block on its own.
#
# Peers run in the same session when on PATH (restic, borg, rustic), each
# with its own repository in the work directory and no encryption where
# the tool allows it, so the machine's noise hits everyone alike. Peers use
# their default compression (rustic: zstd 3), borg zstd 3.
#
#   benches/cli_backup.sh [MIB]            (needs /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-2048}
COMPRESSION=block
cargo build --release --quiet --bin blocksnap --example vm_image
BIN=$PWD/target/release/blocksnap
GEN=$PWD/target/release/examples/vm_image
WORK=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-bench.XXXXXX")
S3S_PID=
cleanup() {
    [ -z "$S3S_PID" ] || kill "$S3S_PID" 2> /dev/null || true
    rm -rf "$WORK"
}
# Also on signals (a pipe into `head` ends the script with SIGPIPE).
trap cleanup EXIT
trap 'exit 1' INT TERM HUP PIPE
ROOT=$PWD
cd "$WORK"

"$GEN" create disk.img "$MIB"
cp disk.img disk-v1.img
"$GEN" rewrite disk.img 5 changed.txt
mv disk.img disk-v2.img
BYTES=$(stat -c %s disk-v1.img)

# run LABEL COMMAND...: time, CPU time (user + system) and peak RSS of one
# step (page cache warm).
run() {
    local label=$1
    shift
    cat disk-v1.img disk-v2.img > /dev/null
    # No write-back of an earlier step may run during this one.
    sync
    /usr/bin/time -f "%e %M %U %S" -o time.txt "$@" > out.txt
    read -r seconds kib user system < time.txt
    awk -v l="$label" -v s="$seconds" -v k="$kib" -v b="$BYTES" -v c="$user" -v y="$system" \
        'BEGIN { printf "%-44s %7.2f s %9.0f MiB/s %7.1f MiB peak %6.2f s CPU\n", l, s, b / 1048576 / s, k / 1024, c + y }'
}

echo "image: $MIB MiB, $(wc -l < changed.txt) blocks rewritten; $(nproc) cores"
export BLOCKSNAP_STORE=$WORK/store
ln -sf disk-v1.img disk.img
run "blocksnap backup (full)" "$BIN" --quiet backup disk.img
FULL=$(cat out.txt)
echo "  stored: $(du -sb store | cut -f1 | awk '{ printf "%.1f MiB", $1 / 1048576 }') (store directory)"
STORED=$("$BIN" stats --json | sed -n 's/.*"StoredBytes": \([0-9]*\).*/\1/p')
# The baseline does, on one thread, the work any backup of this image
# must do to store what blocksnap stores: a zero check, a blake3 id and
# zstd for each distinct block. Its user CPU is the floor under the
# backup's (its system time is reading the image in one piece).
BASELINE=$(/usr/bin/time -f "%U" -o floor.txt "$GEN" baseline disk-v1.img "$COMPRESSION")
echo "  floor: zero check, blake3 and zstd of each distinct block, one thread: $(cat floor.txt) CPU-s"
awk -v s="$STORED" -v b="$BASELINE" \
    'BEGIN { printf "stored %.1f MiB; distinct non-zero blocks each compressed alone: %.1f MiB (%+.2f%%)\n", s/1048576, b/1048576, (s-b)*100/b }'
cp -r store store-after-full
ln -sf disk-v2.img disk.img
run "blocksnap backup --parent (hash comparison)" "$BIN" --quiet backup disk.img --parent "$FULL"
SECOND=$(cat out.txt)
rm -rf store-hash && mv store store-hash && mv store-after-full store
run "blocksnap backup --parent --changed-blocks" "$BIN" --quiet backup disk.img --parent "$FULL" --changed-blocks changed.txt
rm -rf store && mv store-hash store
run "blocksnap restore (with its fsync)" "$BIN" --json restore "$SECOND" restored.img
RESTORE_SECONDS=$(cut -d' ' -f1 time.txt)
sed -n 's/.*"SecondsBeforeSync": \([0-9.]*\).*/  before the final sync: \1 s/p' out.txt
cmp disk-v2.img restored.img && echo "  restore is byte-identical"
rm -f restored.img
# What the machine can do: the same non-zero bytes copied from the page
# cache (dd skips the zero blocks as restore does) and made durable.
run "dd conv=sparse,fsync (the restore's floor)" dd if=disk-v2.img of=restored.img bs=512K conv=sparse,fsync status=none
awk -v r="$RESTORE_SECONDS" -v d="$(cut -d' ' -f1 time.txt)" 'BEGIN { printf "  restore / dd: %.2fx\n", r / d }'
rm -f restored.img

archive_size() { echo "  archive: $(stat -c %s "$1" | awk '{ printf "%.1f MiB", $1 / 1048576 }')"; }
mkdir -p bucket
run "blocksnap export (full, to a directory)" "$BIN" --quiet export "$FULL" --bucket bucket --name full
ARCHIVE=$(cat out.txt)
archive_size "$ARCHIVE"
run "blocksnap import (full, into a new store)" env BLOCKSNAP_STORE="$WORK/imported" "$BIN" --quiet import "$ARCHIVE"
IMPORTED=$(cat out.txt)
run "blocksnap export --base (the delta)" "$BIN" --quiet export "$SECOND" --bucket bucket --base "$FULL" --name delta
DELTA=$(cat out.txt)
archive_size "$DELTA"
run "blocksnap import --parent (the delta)" env BLOCKSNAP_STORE="$WORK/imported" "$BIN" --quiet import "$DELTA" --parent "$IMPORTED"
BLOCKSNAP_STORE="$WORK/imported" "$BIN" --quiet restore "$(cat out.txt)" restored.img
cmp disk-v2.img restored.img && echo "  full + delta imported restore byte-identical"
rm -rf restored.img "$WORK/imported"

S3S_FS=${BLOCKSNAP_S3S_FS:-$ROOT/target/s3s-fs/bin/s3s-fs}
if [ -x "$S3S_FS" ]; then
    mkdir -p s3root/bench
    RUST_LOG=info "$S3S_FS" --host 127.0.0.1 --port 0 --access-key bench --secret-key bench-secret s3root > s3s.log 2>&1 &
    S3S_PID=$!
    until grep -q "server is running at" s3s.log; do sleep 0.1; done
    ENDPOINT=$(sed -n 's/.*server is running at \(http[^ ]*\).*/\1/p' s3s.log | head -1)
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
    run "blocksnap export (full, to s3s-fs)" "$BIN" --quiet --endpoint "$ENDPOINT" export "$FULL" --bucket s3://bench
    S3_KEY=$(cat out.txt)
    run "blocksnap import (full, from s3s-fs)" env BLOCKSNAP_STORE="$WORK/imported" "$BIN" --quiet --endpoint "$ENDPOINT" import "$S3_KEY"
    rm -rf "$WORK/imported" s3root
    kill $S3S_PID
fi

# The store in a bucket: SeaweedFS on loopback ($BLOCKSNAP_WEED, else
# target/boto3-venv/bin/weed, as the test command installs it), against
# the directory store's steps above and restic's S3 backend below.
WEED=${BLOCKSNAP_WEED:-$ROOT/target/boto3-venv/bin/weed}
AWS_CLI=${BLOCKSNAP_AWS_CLI:-$ROOT/target/boto3-venv/bin/aws}
WEED_PID=
if [ -x "$WEED" ] && [ -x "$AWS_CLI" ]; then
    mkdir -p weed
    echo '{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' > weed.json
    PORTS=$(python3 -c 'import socket
s=[socket.socket() for _ in range(14)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
    set -- $PORTS
    "$WEED" mini -dir=weed -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config=weed.json -admin.ui=false \
        -webdav=false -master.telemetry=false -s3.port="$1" -s3.port.grpc="$2" -master.port="$3" \
        -master.port.grpc="$4" -volume.port="$5" -volume.port.grpc="$6" -filer.port="$7" \
        -filer.port.grpc="$8" -admin.port="$9" -admin.port.grpc="${10}" -s3.port.iceberg="${11}" \
        -s3.port.lance="${12}" -metricsPort="${13}" -s3.metricsPort="${14}" > weed.log 2>&1 &
    WEED_PID=$!
    trap '[ -z "$WEED_PID" ] || kill "$WEED_PID" 2> /dev/null || true; cleanup' EXIT
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
    export AWS_ENDPOINT_URL=http://127.0.0.1:$1
    until "$AWS_CLI" s3 mb s3://bench > /dev/null 2>&1; do sleep 0.3; done
    # The CPU seconds SeaweedFS has used so far (it shares the machine).
    server_cpu() {
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$WEED_PID/stat"
    }
    # run_bucket LABEL COMMAND...: as run, the requests the step sent and
    # the CPU time SeaweedFS spent serving them.
    run_bucket() {
        local before
        before=$(server_cpu)
        run "$@" 2> err.txt
        sed -n 's/^bucket requests: /  requests: /p' err.txt
        awk -v a="$before" -v b="$(server_cpu)" 'BEGIN { printf "  SeaweedFS CPU: %.2f s\n", b - a }'
    }
    export BLOCKSNAP_STORE=s3://bench/store BLOCKSNAP_CACHE=$WORK/cache
    ln -sf disk-v1.img disk.img
    run_bucket "blocksnap backup (full, into SeaweedFS)" "$BIN" backup disk.img
    BFULL=$(cat out.txt)
    OBJECTS=$("$AWS_CLI" s3 ls --recursive s3://bench/store/ | wc -l)
    BSTORED=$("$AWS_CLI" s3 ls --recursive --summarize s3://bench/store/ | sed -n 's/.*Total Size: //p')
    awk -v o="$OBJECTS" -v b="$BSTORED" \
        'BEGIN { printf "  bucket: %d objects, %.1f MiB (%.1f objects per GiB stored)\n", o, b/1048576, o/(b/1073741824) }'
    ln -sf disk-v2.img disk.img
    run_bucket "blocksnap backup --parent (SeaweedFS, hash)" "$BIN" backup disk.img --parent "$BFULL"
    BSECOND=$(cat out.txt)
    rm -rf "$WORK/cache"
    run_bucket "blocksnap restore (SeaweedFS, cold cache)" "$BIN" restore "$BSECOND" restored.img
    cmp disk-v2.img restored.img && echo "  restore from the bucket is byte-identical"
    rm -f restored.img
    export BLOCKSNAP_STORE=$WORK/store
    unset BLOCKSNAP_CACHE
    if command -v restic > /dev/null; then
        mkdir -p peer
        cp disk-v1.img peer/disk.img
        RESTIC_REPOSITORY=s3:$AWS_ENDPOINT_URL/bench/restic RESTIC_PASSWORD=bench restic init > /dev/null 2>&1
        run_bucket "restic backup (full, into SeaweedFS)" env RESTIC_REPOSITORY=s3:$AWS_ENDPOINT_URL/bench/restic \
            RESTIC_PASSWORD=bench restic backup --quiet peer/disk.img
        cp disk-v2.img peer/disk.img
        run_bucket "restic backup (incremental, SeaweedFS)" env RESTIC_REPOSITORY=s3:$AWS_ENDPOINT_URL/bench/restic \
            RESTIC_PASSWORD=bench restic backup --quiet peer/disk.img
        rm -rf restored-peer
        run_bucket "restic restore (SeaweedFS)" env RESTIC_REPOSITORY=s3:$AWS_ENDPOINT_URL/bench/restic \
            RESTIC_PASSWORD=bench restic restore latest --quiet --target restored-peer
        rm -rf restored-peer peer/disk.img
    fi
    kill "$WEED_PID"
    WEED_PID=
    unset AWS_ENDPOINT_URL
fi

# Peers back up one path, peer/disk.img, holding v1 then v2 (copied in
# outside the timed steps), so their second backup is incremental.
mkdir -p peer
stored() { echo "  stored: $(du -sb "$1" | cut -f1 | awk '{ printf "%.1f MiB", $1 / 1048576 }')"; }
peer_round() { # NAME INIT FULL INCREMENTAL RESTORE REPO
    # Restores are timed with a sync, as blocksnap's includes its fsync.
    local name=$1
    eval "$2" > /dev/null 2>&1
    cp disk-v1.img peer/disk.img
    run "$name backup (full)" sh -c "$3"
    stored "$6"
    cp disk-v2.img peer/disk.img
    run "$name backup (incremental)" sh -c "$4"
    rm -rf restored-peer
    run "$name restore (with sync)" sh -c "$5 && sync"
    rm -rf restored-peer
}
if command -v restic > /dev/null; then
    export RESTIC_REPOSITORY=$WORK/restic RESTIC_PASSWORD=bench
    peer_round restic "restic init" "restic backup --quiet peer/disk.img" \
        "restic backup --quiet peer/disk.img" "restic restore latest --quiet --target restored-peer" "$WORK/restic"
fi
if command -v borg > /dev/null; then
    export BORG_REPO=$WORK/borg BORG_PASSPHRASE=bench
    peer_round borg "borg init --encryption=none" "borg create --compression zstd,3 ::v1 peer/disk.img" \
        "borg create --compression zstd,3 ::v2 peer/disk.img" \
        "mkdir -p restored-peer && cd restored-peer && borg extract ::v2" "$WORK/borg"
fi
if command -v rustic > /dev/null; then
    export RUSTIC_REPOSITORY=$WORK/rustic RUSTIC_PASSWORD=bench
    peer_round rustic "rustic init" "rustic backup peer/disk.img" "rustic backup peer/disk.img" \
        "rustic restore latest restored-peer" "$WORK/rustic"
fi
