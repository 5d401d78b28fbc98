"""Rate quotas through boto3: a server started with ListChangedBlocks
limited to 1 per second. The calls name a snapshot that does not exist, so
each costs the server next to nothing and only the quota decides: without
retries the SDK raises RequestThrottledException with its Reason; with its
standard retries it gets through (to the not-found answer), as against AWS.
argv[1] is the endpoint URL."""

import sys
import unittest

from common import ebs_client

ENDPOINT = sys.argv.pop(1)
MISSING = "snap-0123456789abcdef"


class Throttling(unittest.TestCase):
    def test_throttled_then_retried(self):
        once = ebs_client(ENDPOINT, attempts=1)
        throttled = None
        for _ in range(10):
            try:
                once.list_changed_blocks(SecondSnapshotId=MISSING)
            except once.exceptions.RequestThrottledException as error:
                throttled = error
                break
            except once.exceptions.ResourceNotFoundException:
                pass
        self.assertIsNotNone(throttled, "ten quick calls, none throttled")
        self.assertEqual(throttled.response["Reason"], "ACCOUNT_THROTTLED")
        self.assertEqual(throttled.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        patient = ebs_client(ENDPOINT, attempts=10)
        for _ in range(3):
            with self.assertRaises(patient.exceptions.ResourceNotFoundException):
                patient.list_changed_blocks(SecondSnapshotId=MISSING)


if __name__ == "__main__":
    unittest.main(verbosity=2)
