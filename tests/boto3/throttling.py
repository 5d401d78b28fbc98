"""Rate quotas through boto3: a server started with StartSnapshot limited
to 2 per second. Without retries the SDK raises RequestThrottledException
with its Reason; with its standard retries it gets through, as against AWS.
argv[1] is the endpoint URL."""

import sys
import unittest

from common import ebs_client

ENDPOINT = sys.argv.pop(1)


def client(attempts):
    return ebs_client(ENDPOINT, attempts=attempts)


class Throttling(unittest.TestCase):
    def test_throttled_then_retried(self):
        once = client(1)
        throttled = None
        for _ in range(10):
            try:
                once.start_snapshot(VolumeSize=1)
            except once.exceptions.RequestThrottledException as error:
                throttled = error
                break
        self.assertIsNotNone(throttled, "ten quick starts, none throttled")
        self.assertEqual(throttled.response["Reason"], "ACCOUNT_THROTTLED")
        self.assertEqual(throttled.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        patient = client(10)
        started = [patient.start_snapshot(VolumeSize=1)["SnapshotId"] for _ in range(6)]
        self.assertEqual(len(set(started)), 6)


if __name__ == "__main__":
    unittest.main(verbosity=2)
