"""The S3 server of tests/remote (versitygw on 127.0.0.1) for the multi-host saves to a bucket."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "remote"))

from remote_servers import _no_ambient_cloud_credentials, s3  # noqa: E402, F401
