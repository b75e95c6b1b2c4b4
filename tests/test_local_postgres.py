"""The zero-set-up server (local_postgres.py), in copies of the project in temporary
folders: their .pgdata/ is a throwaway, never the learner's."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from test_main import ANN

HERE = Path(__file__).resolve().parent.parent
POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals (kill -9, Ctrl+C)")


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
        postgres_of(folder).terminate()


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
    for _ in range(300):
        try:
            if httpx.get(f"{url}/users", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            assert process.poll() is None, "the app exited at start-up"
        time.sleep(0.2)
    raise TimeoutError(f"the app did not answer on {url}")


def press_ctrl_c(process):
    """Ctrl+C in the app's terminal: SIGINT to its process group; wait until it has ended."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=30)


@POSIX_SIGNALS
@pytest.mark.parametrize("project_copy", ["my project + R&D #1 100% Ivan's/Иван Петров " + "x" * 100], ids=["odd-long-name"], indirect=True)
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
