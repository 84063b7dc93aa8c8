import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture
def tmp(tmp_path):
    """A temporary directory as a str."""
    return str(tmp_path)


def pytest_report_header(config):
    import bpz

    return f"bpz {bpz.__version__} from {os.path.dirname(bpz.__file__)} (python {sys.version.split()[0]})"
