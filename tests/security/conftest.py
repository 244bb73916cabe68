"""The security layer: each test is a finding of an outside tester, or a new case of one.

`pytest -m security` runs just these. The HTTP tests use the real aiohttp app over the
in-memory service of tests/test_api.py; tests/security/test_worker.py attacks a real worker.
"""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.security)
