"""Two `blocksnap serve` instances on one bucket store, through boto3:
snapshots started, filled and completed through the first are listed, read
and diffed through the second at once; a put or completion sent to the
instance that did not start the snapshot gets ValidationException naming
the writer that did. argv[1] and argv[2] are the two endpoints."""

import sys
import unittest

from common import BLOCK, ebs_client, put_block as put

FIRST = sys.argv.pop(1)
SECOND = sys.argv.pop(1)


class TwoInstances(unittest.TestCase):
    def test_writes_through_one_reads_through_the_other(self):
        first, second = ebs_client(FIRST), ebs_client(SECOND)
        blocks = {0: b"a" * BLOCK, 1: b"b" * BLOCK}
        parent = first.start_snapshot(VolumeSize=1)["SnapshotId"]
        for index, data in blocks.items():
            put(first, parent, index, data)
        first.complete_snapshot(SnapshotId=parent, ChangedBlocksCount=2)
        child = first.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)["SnapshotId"]
        put(first, child, 1, b"c" * BLOCK)
        first.complete_snapshot(SnapshotId=child, ChangedBlocksCount=1)

        listed = second.list_snapshot_blocks(SnapshotId=parent)
        self.assertEqual([block["BlockIndex"] for block in listed["Blocks"]], [0, 1])
        for block in listed["Blocks"]:
            got = second.get_snapshot_block(
                SnapshotId=parent, BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"]
            )
            self.assertEqual(got["BlockData"].read(), blocks[block["BlockIndex"]])
        changed = second.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)
        self.assertEqual([block["BlockIndex"] for block in changed["ChangedBlocks"]], [1])

    def test_a_pending_snapshot_takes_puts_only_where_it_started(self):
        first, second = ebs_client(FIRST), ebs_client(SECOND)
        pending = first.start_snapshot(VolumeSize=1)["SnapshotId"]
        with self.assertRaises(second.exceptions.ValidationException) as put_elsewhere:
            put(second, pending, 0, b"d" * BLOCK)
        self.assertIn("pending in the process of writer", str(put_elsewhere.exception))
        with self.assertRaises(second.exceptions.ValidationException) as complete_elsewhere:
            second.complete_snapshot(SnapshotId=pending, ChangedBlocksCount=0)
        self.assertIn("pending in the process of writer", str(complete_elsewhere.exception))
        put(first, pending, 0, b"d" * BLOCK)
        first.complete_snapshot(SnapshotId=pending, ChangedBlocksCount=1)
        self.assertEqual(
            [block["BlockIndex"] for block in second.list_snapshot_blocks(SnapshotId=pending)["Blocks"]],
            [0],
        )


if __name__ == "__main__":
    unittest.main(verbosity=2)
