"""Uploads one snapshot as ALICE through `blocksnap serve` and prints its id.

Run by tests/boto3.rs: argv[1] is the endpoint URL. Block 3 of a 1 GiB
volume holds bytes 0..255 repeated; every other block is unwritten.
"""

import sys

from common import BLOCK, ebs_client, put_block

ebs = ebs_client(sys.argv[1])
snapshot = ebs.start_snapshot(VolumeSize=1, Description="served")["SnapshotId"]
put_block(ebs, snapshot, 3, bytes(range(256)) * (BLOCK // 256))
ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=1)
print(snapshot)
print("OK", file=sys.stderr)
