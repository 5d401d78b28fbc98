"""Encrypted snapshots through boto3 against `blocksnap serve` with a key
file. argv[1] is the endpoint URL."""

import os
import sys
import unittest

from common import BLOCK, checksum as block_checksum, ebs_client

ENDPOINT = sys.argv.pop(1)
DEFAULT_KEY = "arn:aws:kms:local:000000000000:key/blocksnap-default"


class EncryptedThroughBoto3(unittest.TestCase):
    def setUp(self):
        self.ebs = ebs_client(ENDPOINT)

    def test_encrypted_round_trip_and_inheritance(self):
        started = self.ebs.start_snapshot(VolumeSize=1, Encrypted=True)
        self.assertEqual(started["SseType"], "sse-ebs")
        self.assertEqual(started["KmsKeyArn"], DEFAULT_KEY)
        snapshot = started["SnapshotId"]
        data = os.urandom(BLOCK)
        checksum = block_checksum(data)
        self.ebs.put_snapshot_block(
            SnapshotId=snapshot,
            BlockIndex=4,
            BlockData=data,
            DataLength=BLOCK,
            Checksum=checksum,
            ChecksumAlgorithm="SHA256",
        )
        self.ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=1)
        entry = self.ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"][0]
        got = self.ebs.get_snapshot_block(
            SnapshotId=snapshot, BlockIndex=4, BlockToken=entry["BlockToken"]
        )
        self.assertEqual(got["BlockData"].read(), data)
        self.assertEqual(got["Checksum"], checksum)
        child = self.ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=snapshot)
        self.assertEqual(child["SseType"], "sse-ebs")
        self.assertEqual(child["KmsKeyArn"], DEFAULT_KEY)

    def test_unknown_key_is_refused_at_start(self):
        with self.assertRaises(self.ebs.exceptions.ValidationException) as raised:
            self.ebs.start_snapshot(
                VolumeSize=1,
                Encrypted=True,
                KmsKeyArn="arn:aws:kms:us-east-1:123456789012:key/unknown",
            )
        self.assertEqual(raised.exception.response["Reason"], "INVALID_CUSTOMER_KEY")


if __name__ == "__main__":
    unittest.main(verbosity=2)
