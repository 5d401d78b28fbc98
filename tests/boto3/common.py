"""Helpers shared by the boto3 scripts of tests/boto3.rs."""

import base64
import hashlib

import boto3
from botocore.config import Config

BLOCK = 524288


def ebs_client(endpoint, access="AKIDALICE", secret="alice-secret", attempts=1, region="us-east-1", **kwargs):
    """An EBS client for `endpoint`; `attempts` bounds its standard retries."""
    return boto3.client(
        "ebs",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": attempts, "mode": "standard"}, max_pool_connections=32),
        **kwargs,
    )


def checksum(data):
    """The EBS checksum of a block: Base64 SHA-256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def put_block(client, snapshot, index, data):
    """PutSnapshotBlock of one whole block, with its checksum."""
    return client.put_snapshot_block(
        SnapshotId=snapshot,
        BlockIndex=index,
        BlockData=data,
        DataLength=BLOCK,
        Checksum=checksum(data),
        ChecksumAlgorithm="SHA256",
    )
