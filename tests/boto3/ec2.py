"""EC2's snapshot operations through boto3 against `blocksnap serve`.

Run by tests/boto3.rs: argv[1] is the endpoint URL. Snapshots are made
through the EBS client, then described, filtered, paged, waited for,
copied, tagged and deleted through the EC2 client on the same port, with
its paginators and waiters. ALICE and BOB own different accounts.
"""

import threading
import time
import unittest
import urllib.error
import urllib.request
import sys

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, WaiterError

from common import BLOCK, ebs_client, put_block

ENDPOINT = sys.argv.pop(1)
KEYS = {
    "alice": ("AKIDALICE", "alice-secret", "111111111111"),
    "bob": ("AKIDBOB", "bob-secret", "222222222222"),
}


def ebs(who="alice"):
    access, secret, _ = KEYS[who]
    return ebs_client(ENDPOINT, access, secret)


def ec2(who="alice"):
    access, secret, _ = KEYS[who]
    return boto3.client(
        "ec2",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def block(seed):
    return bytes([seed % 251]) * 7 + bytes(range(256)) * (BLOCK // 256 - 1) + bytes(249)


def snapshot(client, blocks=None, complete=True, **kwargs):
    started = client.start_snapshot(VolumeSize=kwargs.pop("VolumeSize", 1), **kwargs)
    snapshot_id = started["SnapshotId"]
    for index, seed in (blocks or {}).items():
        put_block(client, snapshot_id, index, block(seed))
    if complete:
        client.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=len(blocks or {}))
    return snapshot_id


def tags(pairs):
    return [{"Key": key, "Value": value} for key, value in pairs]


def read_all(client, snapshot_id):
    listed = client.list_snapshot_blocks(SnapshotId=snapshot_id)
    return {
        entry["BlockIndex"]: client.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=entry["BlockIndex"], BlockToken=entry["BlockToken"]
        )["BlockData"].read()
        for entry in listed["Blocks"]
    }


def raw(body, service="ec2", secret="alice-secret"):
    """A hand-signed Query request: (HTTP status, body text)."""
    request = AWSRequest(
        method="POST",
        url=ENDPOINT + "/",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(Credentials("AKIDALICE", secret), service, "us-east-1").add_auth(request)
    prepared = urllib.request.Request(
        ENDPOINT + "/", data=body.encode(), headers=dict(request.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(prepared) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Ec2ThroughBoto3(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        alice = ebs()
        cls.web = snapshot(
            alice,
            {0: 1, 3: 2},
            Description="nightly web",
            Tags=tags([("Name", "web-1"), ("env", "prod")]),
        )
        cls.db = snapshot(alice, {1: 3}, VolumeSize=2, Tags=tags([("Name", "db-1")]))
        cls.pending = snapshot(alice, {2: 4}, complete=False, Tags=tags([("Name", "web-2")]))
        cls.bobs = snapshot(ebs("bob"), {0: 9}, Description="bob's")

    def assert_error(self, call, code, **kwargs):
        with self.assertRaises(ClientError) as raised:
            call(**kwargs)
        self.assertEqual(raised.exception.response["Error"]["Code"], code, raised.exception.response)
        return raised.exception

    def ids(self, **kwargs):
        return {item["SnapshotId"] for item in ec2().describe_snapshots(**kwargs)["Snapshots"]}

    def test_1_describe_shows_every_field_of_the_owners_snapshots_only(self):
        described = ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]
        by_id = {item["SnapshotId"]: item for item in described}
        self.assertTrue({self.web, self.db, self.pending} <= set(by_id), by_id)
        self.assertNotIn(self.bobs, by_id)
        web = by_id[self.web]
        self.assertEqual(web["State"], "completed")
        self.assertEqual(web["Progress"], "100%")
        self.assertEqual(web["VolumeSize"], 1)
        self.assertEqual(web["Description"], "nightly web")
        self.assertEqual(web["OwnerId"], "111111111111")
        self.assertEqual(web["VolumeId"], "vol-ffffffff")
        self.assertFalse(web["Encrypted"])
        self.assertEqual(sorted((t["Key"], t["Value"]) for t in web["Tags"]), [("Name", "web-1"), ("env", "prod")])
        self.assertLess(abs(web["StartTime"].timestamp() - time.time()), 600)
        self.assertEqual(by_id[self.pending]["State"], "pending")
        self.assertEqual(by_id[self.db]["VolumeSize"], 2)
        self.assertEqual(self.ids(SnapshotIds=[self.db]), {self.db})
        bob = ec2("bob").describe_snapshots()["Snapshots"]
        self.assertEqual([item["SnapshotId"] for item in bob], [self.bobs])
        self.assertEqual(self.ids(OwnerIds=["222222222222"]), set())

    def test_2_filters_match_as_ec2_filters_do(self):
        mine = {self.web, self.db, self.pending}

        def filtered(*filters):
            return self.ids(Filters=[{"Name": name, "Values": values} for name, values in filters]) & (
                mine | {self.bobs}
            )

        self.assertEqual(filtered(("status", ["completed"])), {self.web, self.db})
        self.assertEqual(filtered(("status", ["pending", "error"])), {self.pending})
        self.assertEqual(filtered(("tag:Name", ["web*"])), {self.web, self.pending})
        self.assertEqual(filtered(("tag:Name", ["web-?"]), ("status", ["completed"])), {self.web})
        self.assertEqual(filtered(("tag-key", ["env"])), {self.web})
        self.assertEqual(filtered(("description", ["nightly*"])), {self.web})
        self.assertEqual(filtered(("volume-size", ["2"])), {self.db})
        self.assertEqual(filtered(("snapshot-id", [self.db, self.bobs])), {self.db})
        self.assertEqual(filtered(("owner-id", ["222222222222"])), set())
        self.assertEqual(filtered(("encrypted", ["false"])), mine)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual(filtered(("start-time", [today + "*", "1999*"])), mine)
        self.assert_error(ec2().describe_snapshots, "InvalidParameterValue", Filters=[{"Name": "colour", "Values": ["red"]}])

    def test_3_paginators_page_through_many_snapshots(self):
        alice = ebs()
        made = {snapshot(alice, Tags=tags([("batch", "paged")])) for _ in range(12)}
        paginator = ec2().get_paginator("describe_snapshots")
        pages = list(
            paginator.paginate(
                OwnerIds=["self"],
                Filters=[{"Name": "tag:batch", "Values": ["paged"]}],
                PaginationConfig={"PageSize": 5},
            )
        )
        self.assertEqual([len(page["Snapshots"]) for page in pages], [5, 5, 2])
        seen = [item["SnapshotId"] for page in pages for item in page["Snapshots"]]
        self.assertEqual(sorted(seen), sorted(made))
        # A token resumes only the listing it came from.
        first = ec2().describe_snapshots(MaxResults=5, Filters=[{"Name": "tag:batch", "Values": ["paged"]}])
        self.assert_error(ec2().describe_snapshots, "InvalidNextToken", MaxResults=5, NextToken=first["NextToken"])
        self.assert_error(ec2().describe_snapshots, "InvalidNextToken", NextToken="bm90IGEgdG9rZW4=")
        self.assert_error(ec2().describe_snapshots, "InvalidParameterValue", MaxResults=4)
        self.assert_error(
            ec2().describe_snapshots, "InvalidParameterCombination", MaxResults=5, SnapshotIds=[self.web]
        )
        tag_pages = list(
            ec2()
            .get_paginator("describe_tags")
            .paginate(Filters=[{"Name": "key", "Values": ["batch"]}], PaginationConfig={"PageSize": 5})
        )
        self.assertEqual([len(page["Tags"]) for page in tag_pages], [5, 5, 2])
        self.assertEqual(
            sorted(tag["ResourceId"] for page in tag_pages for tag in page["Tags"]), sorted(made)
        )

    def test_4_waiters_wait_for_completion(self):
        waiter = ec2().get_waiter("snapshot_completed")
        waiter.wait(SnapshotIds=[self.web], WaiterConfig={"Delay": 1, "MaxAttempts": 2})
        alice = ebs()
        pending = snapshot(alice, {5: 6}, complete=False)
        completer = threading.Timer(
            1.5, lambda: alice.complete_snapshot(SnapshotId=pending, ChangedBlocksCount=1)
        )
        completer.start()
        started = time.monotonic()
        waiter.wait(SnapshotIds=[pending], WaiterConfig={"Delay": 1, "MaxAttempts": 20})
        completer.join()
        self.assertGreater(time.monotonic() - started, 1.0, "it waited for the completion")
        with self.assertRaises(WaiterError):
            waiter.wait(SnapshotIds=["snap-00000000000000ff"], WaiterConfig={"Delay": 1, "MaxAttempts": 2})

    def test_5_copies_share_blocks_and_survive_their_source(self):
        alice = ebs()
        source = snapshot(alice, {0: 11, 7: 12}, Tags=tags([("Name", "source")]))
        copied = ec2().copy_snapshot(
            SourceSnapshotId=source,
            SourceRegion="us-east-1",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags([("Name", "copy"), ("kind", "copy")])}],
        )["SnapshotId"]
        self.assertNotEqual(copied, source)
        described = ec2().describe_snapshots(SnapshotIds=[copied])["Snapshots"][0]
        self.assertEqual(described["State"], "completed")
        self.assertEqual(described["Description"], f"[Copied {source} from us-east-1]")
        self.assertEqual(sorted(t["Key"] for t in described["Tags"]), ["Name", "kind"])
        expected = {0: block(11), 7: block(12)}
        self.assertEqual(read_all(alice, copied), expected)
        ec2().delete_snapshot(SnapshotId=source)
        self.assertEqual(read_all(alice, copied), expected)
        described_copy = ec2().copy_snapshot(SourceSnapshotId=copied, SourceRegion="us-east-1", Description="again")
        self.assertEqual(self.ids(SnapshotIds=[described_copy["SnapshotId"]]), {described_copy["SnapshotId"]})
        self.assert_error(ec2().copy_snapshot, "IncorrectState", SourceSnapshotId=self.pending, SourceRegion="us-east-1")
        self.assert_error(ec2().copy_snapshot, "InvalidSnapshot.NotFound", SourceSnapshotId=self.bobs, SourceRegion="us-east-1")
        self.assert_error(
            ec2().copy_snapshot, "InvalidParameterValue", SourceSnapshotId=copied, SourceRegion="us-east-1", Encrypted=True
        )
        tagged = ec2().describe_tags(Filters=[{"Name": "resource-id", "Values": [copied]}])["Tags"]
        self.assertEqual(
            sorted((tag["Key"], tag["Value"], tag["ResourceType"]) for tag in tagged),
            [("Name", "copy", "snapshot"), ("kind", "copy", "snapshot")],
        )

    def test_6_delete_removes_only_the_owners_completed_snapshots(self):
        doomed = snapshot(ebs(), {4: 5})
        ec2().delete_snapshot(SnapshotId=doomed)
        self.assert_error(ec2().describe_snapshots, "InvalidSnapshot.NotFound", SnapshotIds=[doomed])
        self.assert_error(ec2().delete_snapshot, "InvalidSnapshot.NotFound", SnapshotId=doomed)
        self.assert_error(ec2().delete_snapshot, "InvalidSnapshot.NotFound", SnapshotId=self.bobs)
        self.assert_error(ec2().delete_snapshot, "InvalidSnapshotID.Malformed", SnapshotId="snap-xyz")
        self.assertEqual([s["SnapshotId"] for s in ec2("bob").describe_snapshots()["Snapshots"]], [self.bobs])
        self.assert_error(ec2().delete_snapshot, "DryRunOperation", SnapshotId=self.db, DryRun=True)
        self.assertIn(self.db, self.ids())

    def test_8_tags_are_created_replaced_and_deleted(self):
        alice = ebs()
        first = snapshot(alice, Tags=tags([("Name", "t1"), ("keep", "yes")]))
        second = snapshot(alice, complete=False)

        def tags_of(snapshot_id):
            described = ec2().describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
            return [(tag["Key"], tag["Value"]) for tag in described.get("Tags", [])]

        ec2().create_tags(Resources=[first, second], Tags=tags([("Name", "renamed"), ("team", "storage")]))
        self.assertEqual(tags_of(first), [("Name", "renamed"), ("keep", "yes"), ("team", "storage")])
        self.assertEqual(tags_of(second), [("Name", "renamed"), ("team", "storage")])
        self.assertEqual(
            self.ids(Filters=[{"Name": "tag:team", "Values": ["storage"]}]) & {first, second}, {first, second}
        )
        ec2().delete_tags(Resources=[first], Tags=[{"Key": "keep", "Value": "no"}, {"Key": "team"}])
        self.assertEqual(tags_of(first), [("Name", "renamed"), ("keep", "yes")])
        ec2().delete_tags(Resources=[first], Tags=[{"Key": "keep", "Value": "yes"}])
        self.assertEqual(tags_of(first), [("Name", "renamed")])
        ec2().delete_tags(Resources=[second])
        self.assertEqual(tags_of(second), [])
        # The pending snapshot still completes, its tags kept.
        ec2().create_tags(Resources=[second], Tags=tags([("late", "1")]))
        alice.complete_snapshot(SnapshotId=second, ChangedBlocksCount=0)
        self.assertEqual(tags_of(second), [("late", "1")])
        self.assert_error(ec2().create_tags, "InvalidParameterValue", Resources=[first], Tags=tags([("aws:x", "1")]))
        self.assert_error(ec2().create_tags, "InvalidSnapshot.NotFound", Resources=[first, self.bobs], Tags=tags([("x", "1")]))
        self.assertEqual(tags_of(first), [("Name", "renamed")], "nothing changed when one resource is missing")
        self.assert_error(ec2().create_tags, "InvalidID", Resources=["vol-0123"], Tags=tags([("x", "1")]))
        self.assert_error(
            ec2().create_tags, "InvalidParameterValue", Resources=[first], Tags=tags([(f"k{i}", "v") for i in range(50)])
        )
        self.assertEqual(tags_of(first), [("Name", "renamed")])
        self.assert_error(ec2("bob").delete_tags, "InvalidSnapshot.NotFound", Resources=[first])

    def test_7_other_actions_bad_signatures_and_forms_get_ec2_errors(self):
        status, body = raw("Action=RunInstances&Version=2016-11-15")
        self.assertEqual(status, 400)
        self.assertIn("<Code>InvalidAction</Code>", body)
        self.assertIn("<RequestID>", body)
        status, body = raw("Version=2016-11-15")
        self.assertEqual(status, 400)
        self.assertIn("<Code>MissingAction</Code>", body)
        status, body = raw("Action=DescribeSnapshots&Version=2016-11-15", service="ebs")
        self.assertEqual(status, 401)
        self.assertIn("<Code>AuthFailure</Code>", body)
        status, body = raw("Action=DescribeSnapshots&Version=2016-11-15", secret="wrong")
        self.assertEqual(status, 401)
        self.assertIn("<Code>AuthFailure</Code>", body)
        status, body = raw("Action=DeleteSnapshot&Version=2016-11-15")
        self.assertEqual(status, 400)
        self.assertIn("<Code>MissingParameter</Code>", body)
        status, body = raw("Action=DescribeSnapshots&Version=2016-11-15&SnapshotId.1=" + self.web)
        self.assertEqual(status, 200)
        self.assertIn('xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"', body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
