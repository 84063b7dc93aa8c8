"""Fixtures of the remote-archive tests: real servers on 127.0.0.1 (see remote_servers.py)."""

from remote_servers import _no_ambient_cloud_credentials, delay_proxy, fault_server, nginx, s3  # noqa: F401
