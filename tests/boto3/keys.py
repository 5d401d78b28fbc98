"""One signed request with given keys against `blocksnap serve`.

Run by tests/boto3.rs: argv[1] is the endpoint URL, argv[2] and argv[3]
the access key and secret, argv[4] `accepted` or `refused`, and argv[5],
if given, the certificate to trust (HTTPS).
"""

import sys

from botocore.exceptions import ClientError, SSLError

from common import ebs_client

endpoint, access, secret, expected = sys.argv[1:5]
verify = sys.argv[5] if len(sys.argv) > 5 else None
ebs = ebs_client(endpoint, access, secret, verify=verify)
try:
    ebs.list_snapshot_blocks(SnapshotId="snap-0000000000000001")
    outcome = "accepted"
except ClientError as error:
    code = error.response["Error"]["Code"]
    # A known key reaches the engine: the snapshot is simply not there.
    outcome = "accepted" if code == "ResourceNotFoundException" else "refused"
except SSLError:
    outcome = "untrusted"
print(outcome)
if outcome != expected:
    sys.exit(f"{access}: {outcome}, expected {expected}")
print("OK", file=sys.stderr)
