"""boto3 over HTTPS against `blocksnap serve --tls-cert --tls-key`, trusting
the test's self-signed certificate. argv[1] is the endpoint URL, argv[2]
the certificate to trust."""

import os
import sys
import unittest

from common import BLOCK, checksum, ebs_client

ENDPOINT = sys.argv.pop(1)
CERTIFICATE = sys.argv.pop(1)


class OverTls(unittest.TestCase):
    def test_round_trip_over_https(self):
        self.assertTrue(ENDPOINT.startswith("https://"))
        ebs = ebs_client(ENDPOINT, verify=CERTIFICATE)
        snapshot = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        data = os.urandom(BLOCK)
        ebs.put_snapshot_block(
            SnapshotId=snapshot,
            BlockIndex=1,
            BlockData=data,
            DataLength=BLOCK,
            Checksum=checksum(data),
            ChecksumAlgorithm="SHA256",
        )
        ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=1)
        token = ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"][0]["BlockToken"]
        got = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=1, BlockToken=token)
        self.assertEqual(got["BlockData"].read(), data)


if __name__ == "__main__":
    unittest.main(verbosity=2)
