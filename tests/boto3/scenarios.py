"""The EBS direct API through boto3 against `blocksnap serve`.

Run by tests/boto3.rs: argv[1] is the endpoint URL. The credentials are
fixed test keys (see tests/boto3.rs): ALICE and BOB own different accounts.
"""

import base64
import concurrent.futures
import hashlib
import os
import sys
import unittest

from common import BLOCK, checksum, ebs_client, put_block

ENDPOINT = sys.argv.pop(1)
KEYS = {
    "alice": ("AKIDALICE", "alice-secret", "111111111111"),
    "bob": ("AKIDBOB", "bob-secret", "222222222222"),
}


def client(who="alice", secret=None, retries=1):
    access, real_secret, _ = KEYS[who]
    return ebs_client(ENDPOINT, access, secret or real_secret, attempts=retries)


def block(seed):
    # Deterministic, incompressible-ish content per seed.
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)


def linear(blocks):
    digest = hashlib.sha256()
    for data in blocks:
        digest.update(hashlib.sha256(data).digest())
    return base64.b64encode(digest.digest()).decode()


class EbsThroughBoto3(unittest.TestCase):
    def setUp(self):
        self.ebs = client()

    def put(self, snapshot, index, data, ebs=None):
        return put_block(ebs or self.ebs, snapshot, index, data)

    def snapshot_of(self, writes, parent=None, volume_size=1):
        kwargs = {"VolumeSize": volume_size}
        if parent:
            kwargs["ParentSnapshotId"] = parent
        started = self.ebs.start_snapshot(**kwargs)
        snapshot = started["SnapshotId"]
        for index, seed in writes.items():
            self.put(snapshot, index, block(seed))
        done = self.ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=len(writes))
        self.assertEqual(done["Status"], "completed")
        return snapshot

    def all_blocks(self, snapshot, page=100):
        blocks, token = [], None
        while True:
            kwargs = {"SnapshotId": snapshot, "MaxResults": page}
            if token:
                kwargs["NextToken"] = token
            reply = self.ebs.list_snapshot_blocks(**kwargs)
            blocks.extend(reply["Blocks"])
            token = reply.get("NextToken")
            if not token:
                return blocks

    def test_every_operation_parent_child_and_changed_blocks(self):
        started = self.ebs.start_snapshot(
            VolumeSize=1, Description="parent", Tags=[{"Key": "k", "Value": "v"}], Timeout=60
        )
        self.assertEqual(started["Status"], "pending")
        self.assertEqual(started["OwnerId"], "111111111111")
        self.assertEqual(started["BlockSize"], BLOCK)
        self.assertEqual(started["SseType"], "none")
        self.assertEqual(started["Tags"], [{"Key": "k", "Value": "v"}])
        parent = started["SnapshotId"]
        written = {0: 1, 7: 2, 300: 3}
        for index, seed in written.items():
            reply = self.put(parent, index, block(seed))
            self.assertEqual(reply["Checksum"], checksum(block(seed)))
            self.assertEqual(reply["ChecksumAlgorithm"], "SHA256")
        done = self.ebs.complete_snapshot(
            SnapshotId=parent,
            ChangedBlocksCount=3,
            Checksum=linear(block(written[i]) for i in sorted(written)),
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        )
        self.assertEqual(done["Status"], "completed")
        listed = self.ebs.list_snapshot_blocks(SnapshotId=parent)
        self.assertEqual([b["BlockIndex"] for b in listed["Blocks"]], [0, 7, 300])
        self.assertEqual(listed["VolumeSize"], 1)
        self.assertEqual(listed["BlockSize"], BLOCK)
        for entry in listed["Blocks"]:
            got = self.ebs.get_snapshot_block(
                SnapshotId=parent, BlockIndex=entry["BlockIndex"], BlockToken=entry["BlockToken"]
            )
            data = got["BlockData"].read()
            self.assertEqual(data, block(written[entry["BlockIndex"]]))
            self.assertEqual(got["Checksum"], checksum(data))
            self.assertEqual(got["DataLength"], BLOCK)
        child = self.snapshot_of({7: 9, 500: 4}, parent=parent)
        changed = self.ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)
        entries = changed["ChangedBlocks"]
        self.assertEqual([c["BlockIndex"] for c in entries], [7, 500])
        self.assertIn("FirstBlockToken", entries[0])
        self.assertNotIn("FirstBlockToken", entries[1])
        second = self.ebs.get_snapshot_block(
            SnapshotId=child, BlockIndex=7, BlockToken=entries[0]["SecondBlockToken"]
        )
        self.assertEqual(second["BlockData"].read(), block(9))
        inherited = {b["BlockIndex"] for b in self.all_blocks(child)}
        self.assertEqual(inherited, {0, 7, 300, 500})

    def test_pagination(self):
        snapshot = self.snapshot_of({index: 1000 + index for index in range(0, 500, 2)})
        pages, token, seen = 0, None, []
        while True:
            kwargs = {"SnapshotId": snapshot, "MaxResults": 100}
            if token:
                kwargs["NextToken"] = token
            reply = self.ebs.list_snapshot_blocks(**kwargs)
            pages += 1
            seen.extend(b["BlockIndex"] for b in reply["Blocks"])
            token = reply.get("NextToken")
            if not token:
                break
        self.assertEqual(pages, 3)
        self.assertEqual(seen, list(range(0, 500, 2)))
        start = self.ebs.list_snapshot_blocks(SnapshotId=snapshot, StartingBlockIndex=401, MaxResults=100)
        self.assertEqual(start["Blocks"][0]["BlockIndex"], 402)

    def test_idempotency_tokens(self):
        first = self.ebs.start_snapshot(VolumeSize=1, ClientToken="retry-me")
        again = self.ebs.start_snapshot(VolumeSize=1, ClientToken="retry-me")
        self.assertEqual(first["SnapshotId"], again["SnapshotId"])
        with self.assertRaises(self.ebs.exceptions.ConflictException):
            self.ebs.start_snapshot(VolumeSize=2, ClientToken="retry-me")
        # The SDK fills a token when the caller does not: distinct snapshots.
        a = self.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        b = self.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        self.assertNotEqual(a, b)

    def assert_error(self, call, code, reason=None, ebs=None):
        ebs = ebs or self.ebs
        with self.assertRaises(ebs.exceptions.ClientError) as raised:
            call()
        error = raised.exception.response
        self.assertEqual(error["Error"]["Code"], code, error)
        self.assertTrue(error["Error"]["Message"])
        self.assertEqual(error.get("Reason"), reason, error)
        self.assertTrue(error["ResponseMetadata"]["RequestId"])
        self.assertIsInstance(raised.exception, getattr(ebs.exceptions, code))

    def test_error_classes(self):
        missing = "snap-0123456789abcdef"
        self.assert_error(
            lambda: self.ebs.list_snapshot_blocks(SnapshotId=missing),
            "ResourceNotFoundException",
            "SNAPSHOT_NOT_FOUND",
        )
        self.assert_error(
            lambda: self.ebs.start_snapshot(VolumeSize=70000), "ValidationException", "INVALID_VOLUME_SIZE"
        )
        self.assert_error(
            lambda: self.ebs.start_snapshot(VolumeSize=1, Timeout=5000),
            "ValidationException",
            "INVALID_PARAMETER_VALUE",
        )
        pending = self.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        data = block(5)
        self.assert_error(
            lambda: self.ebs.put_snapshot_block(
                SnapshotId=pending,
                BlockIndex=0,
                BlockData=data,
                DataLength=BLOCK,
                Checksum=checksum(block(6)),
                ChecksumAlgorithm="SHA256",
            ),
            "ValidationException",
            "INVALID_BLOCK",
        )
        self.assert_error(
            lambda: self.put(pending, 2048, data), "ValidationException", "INVALID_BLOCK"
        )
        self.assert_error(
            lambda: self.ebs.get_snapshot_block(SnapshotId=pending, BlockIndex=0, BlockToken="AAAA"),
            "ValidationException",
            "INVALID_SNAPSHOT_ID",
        )
        self.assert_error(
            lambda: self.ebs.complete_snapshot(SnapshotId=pending, ChangedBlocksCount=3),
            "ValidationException",
            "INVALID_PARAMETER_VALUE",
        )
        done = self.snapshot_of({1: 1})
        self.assert_error(
            lambda: self.ebs.list_snapshot_blocks(SnapshotId=done, NextToken="AAAA"),
            "ValidationException",
            "INVALID_PAGE_TOKEN",
        )
        self.assert_error(
            lambda: self.ebs.get_snapshot_block(SnapshotId=done, BlockIndex=1, BlockToken="AAAA"),
            "ValidationException",
            "INVALID_BLOCK_TOKEN",
        )
        other = self.snapshot_of({1: 2})
        self.assert_error(
            lambda: self.ebs.list_changed_blocks(FirstSnapshotId=done, SecondSnapshotId=other),
            "ValidationException",
            "UNRELATED_SNAPSHOTS",
        )
        self.assert_error(
            lambda: self.ebs.start_snapshot(VolumeSize=1, Encrypted=True, ParentSnapshotId=done),
            "ValidationException",
            "INVALID_PARAMETER_VALUE",
        )
        self.assert_error(
            lambda: self.ebs.start_snapshot(VolumeSize=1, Encrypted=True),
            "ValidationException",
            "INVALID_CUSTOMER_KEY",
        )
        wrong = client(secret="not-the-secret")
        self.assert_error(
            lambda: wrong.start_snapshot(VolumeSize=1), "AccessDeniedException", "UNAUTHORIZED_ACCOUNT", ebs=wrong
        )
        unknown = ebs_client(ENDPOINT, "AKIDNOBODY", "x")
        self.assert_error(
            lambda: unknown.list_snapshot_blocks(SnapshotId=done),
            "AccessDeniedException",
            "UNAUTHORIZED_ACCOUNT",
            ebs=unknown,
        )

    def test_concurrent_limit(self):
        # Bob's pending snapshots stay at his limit (the server allows 100).
        bob = client("bob")
        started = [bob.start_snapshot(VolumeSize=1)["SnapshotId"] for _ in range(100)]
        self.assertEqual(len(set(started)), 100)
        self.assert_error(
            lambda: bob.start_snapshot(VolumeSize=1), "ConcurrentLimitExceededException", None, ebs=bob
        )
        # Alice is not affected by Bob's pending snapshots.
        self.ebs.start_snapshot(VolumeSize=1)

    def test_foreign_owner_sees_nothing(self):
        mine = self.snapshot_of({3: 3})
        bob = client("bob")
        self.assert_error(
            lambda: bob.list_snapshot_blocks(SnapshotId=mine),
            "ResourceNotFoundException",
            "SNAPSHOT_NOT_FOUND",
            ebs=bob,
        )
        self.assert_error(
            lambda: bob.start_snapshot(VolumeSize=1, ParentSnapshotId=mine),
            "ResourceNotFoundException",
            "SNAPSHOT_NOT_FOUND",
            ebs=bob,
        )

    def test_concurrent_upload_and_download_of_a_file(self):
        blocks = 96
        image = b"".join(os.urandom(BLOCK) if i % 3 else block(i) for i in range(blocks))
        snapshot = self.ebs.start_snapshot(VolumeSize=1, Description="file")["SnapshotId"]

        def upload(index):
            data = image[index * BLOCK : (index + 1) * BLOCK]
            return self.put(snapshot, index, data)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(upload, range(blocks)))
        self.ebs.complete_snapshot(
            SnapshotId=snapshot,
            ChangedBlocksCount=blocks,
            Checksum=linear(image[i * BLOCK : (i + 1) * BLOCK] for i in range(blocks)),
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        )
        listed = self.all_blocks(snapshot)

        def download(entry):
            got = self.ebs.get_snapshot_block(
                SnapshotId=snapshot, BlockIndex=entry["BlockIndex"], BlockToken=entry["BlockToken"]
            )
            return entry["BlockIndex"], got["BlockData"].read()

        restored = bytearray(blocks * BLOCK)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for index, data in pool.map(download, listed):
                restored[index * BLOCK : (index + 1) * BLOCK] = data
        self.assertEqual(bytes(restored), image)


if __name__ == "__main__":
    unittest.main(verbosity=2)
