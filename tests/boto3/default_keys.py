"""boto3 against a server started with no set-up: the keys come from the
store's generated credentials file. argv[1] is the endpoint URL, argv[2]
the access key id, argv[3] the secret."""

import sys
import unittest

from common import ebs_client

ENDPOINT, ACCESS, SECRET = sys.argv[1:4]
del sys.argv[1:4]


class DefaultKeys(unittest.TestCase):
    def test_generated_key_works_and_others_do_not(self):
        def client(secret):
            return ebs_client(ENDPOINT, ACCESS, secret, region="eu-west-3")

        started = client(SECRET).start_snapshot(VolumeSize=1)
        self.assertEqual(started["OwnerId"], "000000000000")
        wrong = client(SECRET + "x")
        with self.assertRaises(wrong.exceptions.AccessDeniedException):
            wrong.start_snapshot(VolumeSize=1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
