#!/usr/bin/env bash
# A month of nightly backups with retention, as README's cron recipe runs
# them, against restic doing the same in the same run.
#
# A VM-like image (benches' vm_image: 30% zero, 30% text-like, 20%
# compressible, 20% random blocks) is backed up once a day for DAYS days,
# PERCENT% of its blocks rewritten each day (other blocks each day). Each
# day, at 02:00 UTC of a simulated January (libfaketime for blocksnap,
# `--time` for restic):
#   blocksnap backup disk.img --volume vm --parent latest
#   blocksnap forget --keep-daily 7 --keep-weekly 4 --gc
#   restic backup --time ... disk.img
#   restic forget --keep-daily 7 --keep-weekly 4 --prune
# and a second blocksnap store runs the same with `gc --live-threshold
# 0.5` (the collector's former default) instead of `--gc`, for the write
# amplification of the new default.
#
# Reports per tool: seconds for the whole month (backups and retention),
# bytes on disk at the end, snapshots kept; for blocksnap, bytes written
# by backups (new records) and copied by gc, and their ratio (write
# amplification = (new + copied) / new).
#
#   benches/cron_retention.sh [MIB] [DAYS] [PERCENT]   (needs faketime; restic when on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-512}
DAYS=${2:-30}
PERCENT=${3:-3}
command -v faketime > /dev/null || { echo "needs faketime (Debian: faketime)" >&2; exit 2; }
cargo build --release --quiet --bin blocksnap --example vm_image
BIN=$PWD/target/release/blocksnap
GEN=$PWD/target/release/examples/vm_image
WORK=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-cron.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM HUP PIPE
cd "$WORK"
export TZ=UTC FAKETIME_DONT_FAKE_MONOTONIC=1
"$GEN" create disk.img "$MIB"

now() { date +%s.%N; }
stored() { "$BIN" --store "$1" stats --json | sed -n 's/.*"StoredBytes": *\([0-9]*\).*/\1/p'; }
json_field() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" | head -1; }

declare -A seconds=([new]=0 [old]=0 [restic]=0) written=([new]=0 [old]=0) copied=([new]=0 [old]=0)
if command -v restic > /dev/null; then
    export RESTIC_REPOSITORY=$WORK/restic RESTIC_PASSWORD=bench
    restic init --quiet > /dev/null
fi
for day in $(seq 1 "$DAYS"); do
    when=$(date -u -d "2026-01-01 + $((day - 1)) days" +"%Y-%m-%d 02:00:00")
    [ "$day" -eq 1 ] || "$GEN" rewrite disk.img "$PERCENT" /dev/null "$day"
    cat disk.img > /dev/null
    for variant in new old; do
        before=$(stored "store-$variant" 2> /dev/null || echo 0)
        start=$(now)
        faketime "$when" "$BIN" --store "store-$variant" --quiet backup disk.img --volume vm --parent latest > /dev/null
        after=$(stored "store-$variant")
        if [ "$variant" = new ]; then
            faketime "$when" "$BIN" --store "store-$variant" --json forget --keep-daily 7 --keep-weekly 4 --gc > forget.json
            gc=$(tr -d '\n' < forget.json | sed -n 's/.*"Gc": *{\([^}]*\)}.*/\1/p')
        else
            faketime "$when" "$BIN" --store "store-$variant" --json forget --keep-daily 7 --keep-weekly 4 > /dev/null
            gc=$(faketime "$when" "$BIN" --store "store-$variant" --json gc --live-threshold 0.5 | tr -d '\n')
        fi
        end=$(now)
        seconds[$variant]=$(echo "${seconds[$variant]} + $end - $start" | bc)
        written[$variant]=$((written[$variant] + after - before))
        copied[$variant]=$((copied[$variant] + $(echo "$gc" | json_field BytesCopied || echo 0) + 0))
    done
    if command -v restic > /dev/null; then
        start=$(now)
        restic backup --quiet --host vm --time "$when" disk.img > /dev/null
        restic forget --quiet --host vm --keep-daily 7 --keep-weekly 4 --prune > /dev/null
        end=$(now)
        seconds[restic]=$(echo "${seconds[restic]} + $end - $start" | bc)
    fi
done

kept() { "$BIN" --store "$1" ls --json | grep -c '"SnapshotId"'; }
report() {
    local label=$1 store=$2 variant=$3
    local disk
    disk=$(du -sb "$store" | cut -f1)
    awk -v l="$label" -v s="${seconds[$variant]}" -v d="$disk" -v k="$(kept "$store")" \
        -v w="${written[$variant]}" -v c="${copied[$variant]}" \
        'BEGIN { printf "%-34s %8.1f s  %8.1f MiB on disk  %3d kept  %8.1f MiB new  %8.1f MiB copied by gc  WA %.3f\n", l, s, d / 1048576, k, w / 1048576, c / 1048576, (w + c) / (w > 0 ? w : 1) }'
}
echo "$DAYS days, ${MIB} MiB image, ${PERCENT}% of blocks rewritten daily; keep-daily 7, keep-weekly 4"
report "blocksnap (forget --gc, 0.9)" store-new new
report "blocksnap (gc --live-threshold 0.5)" store-old old
if command -v restic > /dev/null; then
    disk=$(du -sb "$WORK/restic" | cut -f1)
    count=$(restic snapshots --json | grep -o '"short_id"' | wc -l)
    awk -v s="${seconds[restic]}" -v d="$disk" -v k="$count" -v v="$(restic version | cut -d' ' -f2)" \
        'BEGIN { printf "%-34s %8.1f s  %8.1f MiB on disk  %3d kept\n", "restic " v " (forget --prune)", s, d / 1048576, k }'
fi
