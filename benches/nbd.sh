#!/usr/bin/env bash
# The NBD issue's benchmark, on the VM-like image of benches/cli_backup.sh
# (default 2 GiB; 5% of its blocks rewritten for the incremental steps):
#
# - nbdcopy of the snapshot's export to a file (and its sync) against
#   `blocksnap restore` (which syncs), in the same run;
# - random 4 KiB reads through the export (the library's NBD client, one
#   request at a time): ops/s, p50 and p99, cold (page cache dropped, when
#   run as root, and a fresh server) and warm (again on the same server);
# - a backup from qemu-storage-daemon exporting the qcow2 disk with a
#   persistent dirty bitmap after 5% of its blocks were rewritten
#   (`--dirty-bitmap`), against the full read with hash comparison
#   (`--parent` alone) from the same export, each from the same store;
# - the time from starting `blocksnap nbd` to reading the first byte of a
#   64 TiB snapshot.
#
#   benches/nbd.sh [MIB]      (needs /usr/bin/time, libnbd-bin, qemu-utils)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-2048}
cargo build --release --quiet --bin blocksnap --example vm_image --example nbd_bench
BIN=$PWD/target/release/blocksnap
GEN=$PWD/target/release/examples/vm_image
HELPER=$PWD/target/release/examples/nbd_bench
WORK=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-nbd-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP PIPE
cd "$WORK"
export BLOCKSNAP_STORE=$WORK/store

# run LABEL COMMAND...: wall time, CPU time and peak RSS of one step.
run() {
    local label=$1
    shift
    /usr/bin/time -f "%e %M %U %S" -o time.txt "$@" > out.txt
    read -r seconds kib user system < time.txt
    echo "$seconds" > seconds.txt
    awk -v l="$label" -v s="$seconds" -v k="$kib" -v c="$user" -v y="$system" \
        'BEGIN { printf "%-52s %7.2f s %7.1f MiB peak %6.2f s CPU\n", l, s, k / 1024, c + y }'
}

# wait_for_socket PATH: until something accepts on it.
wait_for_socket() {
    for _ in $(seq 1 400); do
        python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$1" 2> /dev/null && return
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    exit 1
}

drop_caches() {
    sync
    if [ "$(id -u)" -eq 0 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}

"$GEN" create disk-v1.img "$MIB"
cp disk-v1.img disk-v2.img
"$GEN" rewrite disk-v2.img 5 changed.txt
echo "image: $MIB MiB, $(wc -l < changed.txt) blocks rewritten; $(nproc) cores"
SNAP=$("$BIN" --quiet backup disk-v1.img)

# Copy through the export against restore.
run "blocksnap restore (with its sync)" "$BIN" --quiet restore "$SNAP" restored.img
RESTORE=$(cat seconds.txt)
"$BIN" nbd "$SNAP" --socket "$WORK/nbd.sock" > /dev/null 2> nbd.log &
PIDS+=($!)
NBD_PID=$!
wait_for_socket "$WORK/nbd.sock"
URI="nbd+unix:///$SNAP?socket=$WORK/nbd.sock"
run "nbdcopy of the export (with a sync)" sh -c "nbdcopy '$URI' copied.img && sync copied.img"
COPY=$(cat seconds.txt)
cmp restored.img copied.img && echo "  nbdcopy's file is byte-identical to restore's"
awk -v r="$RESTORE" -v c="$COPY" 'BEGIN { printf "  nbdcopy runs at %.2fx the speed of restore\n", r / c }'
rm -f restored.img copied.img

# Random 4 KiB reads, cold then warm.
kill "$NBD_PID"; wait "$NBD_PID" 2> /dev/null || true
drop_caches
"$BIN" nbd "$SNAP" --socket "$WORK/nbd.sock" > /dev/null 2> nbd.log &
PIDS+=($!)
NBD_PID=$!
wait_for_socket "$WORK/nbd.sock"
echo "cold (page cache dropped: $([ "$(id -u)" -eq 0 ] && echo yes || echo no), fresh server):"
echo "  $("$HELPER" random-reads "$URI" 2000)"
echo "warm (same server, same offsets):"
echo "  $("$HELPER" random-reads "$URI" 2000)"
kill "$NBD_PID"; wait "$NBD_PID" 2> /dev/null || true

# A VM disk with a persistent dirty bitmap, served by qemu-storage-daemon.
qemu-img convert -f raw -O qcow2 disk-v1.img disk.qcow2
qsd() {
    rm -f "$WORK/qsd.sock"
    qemu-storage-daemon --blockdev "driver=file,node-name=file0,filename=$WORK/disk.qcow2" \
        --blockdev driver=qcow2,node-name=disk0,file=file0 \
        --nbd-server "addr.type=unix,addr.path=$WORK/qsd.sock" \
        --export "type=nbd,id=export0,node-name=disk0,name=disk,$1" &
    QSD_PID=$!
    PIDS+=($QSD_PID)
    wait_for_socket "$WORK/qsd.sock"
}
QSD_URI="nbd+unix:///disk?socket=$WORK/qsd.sock"
export BLOCKSNAP_STORE=$WORK/vm-store
qsd writable=off
run "backup from qemu-storage-daemon (full)" "$BIN" --quiet backup "$QSD_URI"
PARENT=$(cat out.txt)
kill "$QSD_PID"; wait "$QSD_PID" 2> /dev/null || true
qemu-img bitmap --add --enable -g 65536 disk.qcow2 b0
# The guest's writes: every rewritten block, through QEMU, so the bitmap
# sees them.
while read -r index; do
    dd if=disk-v2.img of="block-$index" bs=512K skip="$index" count=1 status=none
    echo "write -s block-$index $((index * 524288)) 512k"
done < changed.txt > writes.txt
qemu-io -f qcow2 disk.qcow2 < writes.txt > /dev/null
rm -f block-*
qsd "writable=on,bitmaps.0=b0"
cp -r vm-store vm-store-parent
run "backup --parent (full read, hash comparison)" "$BIN" --json backup "$QSD_URI" --parent "$PARENT"
sed -n 's/.*"BlocksRead": \([0-9]*\).*/  blocks read: \1/p' out.txt
FULLREAD=$(cat seconds.txt)
rm -rf vm-store && cp -r vm-store-parent vm-store
run "backup --parent --dirty-bitmap b0" "$BIN" --json backup "$QSD_URI" --parent "$PARENT" --dirty-bitmap b0
sed -n 's/.*"BlocksRead": \([0-9]*\).*/  blocks read: \1/p' out.txt
BITMAP=$(cat seconds.txt)
CHILD=$(sed -n 's/.*"SnapshotId": "\([^"]*\)".*/\1/p' out.txt)
awk -v f="$FULLREAD" -v b="$BITMAP" 'BEGIN { printf "  the dirty bitmap backup is %.1fx faster\n", f / b }'
kill "$QSD_PID"; wait "$QSD_PID" 2> /dev/null || true
"$BIN" --quiet restore "$CHILD" child.img
cmp child.img disk-v2.img && echo "  the bitmap backup restores byte-identical to the rewritten disk"
rm -f child.img

# The first byte of a 64 TiB snapshot.
"$HELPER" huge "$WORK/huge" > huge.txt
"$HELPER" first-byte "$BIN" "$WORK/huge" "$(cat huge.txt)"
