"""test_main.py copied alone into a learner's project, without conftest.py: it never
empties a database it was not given for tests. It runs on TEST_DATABASE_URL, or
stops before its first test with one line saying what to set."""

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from main import User, engine

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent
LEARNERS_ROW = (1, "Learner", "me@example.com")


def url_of(database):
    """TEST_DATABASE_URL with another database on the same server."""
    return make_url(os.environ["TEST_DATABASE_URL"]).set(database=database).render_as_string(hide_password=False)


async def rows_of(database):
    """The users rows of `database` in id order, read on a connection of its own; None if it has no users table."""
    other = create_async_engine(url_of(database))
    try:
        async with other.connect() as conn:
            if await conn.scalar(text("SELECT to_regclass('users')")) is None:
                return None
            return [tuple(row) for row in await conn.execute(text("SELECT id, name, email FROM users ORDER BY id"))]
    finally:
        await other.dispose()


@pytest.fixture
async def databases(started_app):
    """Two new databases on the test server, dropped afterwards: "dev" holds the learner's row, "test" is empty."""
    names = {"dev": f"learner_dev_{os.getpid()}", "test": f"learner_test_{os.getpid()}"}
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE runs outside a transaction
    try:
        async with admin.connect() as conn:
            for name in names.values():
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        dev = create_async_engine(url_of(names["dev"]))
        async with dev.begin() as conn:
            await conn.run_sync(User.metadata.create_all)
            await conn.execute(text("INSERT INTO users (name, email) VALUES ('Learner', 'me@example.com')"))
        await dev.dispose()
        yield names
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient privilege: TEST_DATABASE_URL without CREATEDB
            raise
        pytest.skip(f"needs CREATE DATABASE on the test server: {exc.orig}")
    finally:
        async with admin.connect() as conn:
            for name in names.values():
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def learners_project(tmp_path):
    """main.py, local_postgres.py and test_main.py in a folder of their own: no conftest.py."""
    for name in ("main.py", "local_postgres.py", "test_main.py"):
        shutil.copy(HERE / name, tmp_path)
    yield tmp_path
    if (tmp_path / ".pgdata" / "postmaster.pid").exists():  # a failed test started the zero-set-up server there
        server = psutil.Process(int((tmp_path / ".pgdata" / "postmaster.pid").read_text().split()[0]))
        server.terminate()
        server.wait(10)


async def run_pytest(folder, **env):
    """`pytest` in folder, in this environment without the database URLs, plus env; return its exit code and output."""
    base = {k: v for k, v in os.environ.items() if k not in ("TEST_DATABASE_URL", "DATABASE_URL") and not k.startswith("PYTEST")}
    run = functools.partial(subprocess.run, [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], cwd=folder,
                            env={**base, **env}, capture_output=True, text=True, timeout=50)
    result = await anyio.to_thread.run_sync(run)
    return result.returncode, result.stdout + result.stderr


async def test_copied_alone_with_only_database_url_stops_before_the_first_test(learners_project, databases):
    code, output = await run_pytest(learners_project, DATABASE_URL=url_of(databases["dev"]))

    assert code == pytest.ExitCode.USAGE_ERROR, output
    [line] = [line for line in output.splitlines() if "TEST_DATABASE_URL" in line]
    assert "Set TEST_DATABASE_URL to a PostgreSQL database the tests may empty" in line
    assert "no tests ran" in output and "passed" not in output
    assert await rows_of(databases["dev"]) == [LEARNERS_ROW]
    assert await rows_of(databases["test"]) is None  # nor did they run anywhere else


async def test_copied_alone_without_any_url_stops_and_starts_no_server(learners_project):
    code, output = await run_pytest(learners_project)

    assert code == pytest.ExitCode.USAGE_ERROR, output
    assert "no tests ran" in output
    # main.py was never imported: it would have started the zero-set-up server in .pgdata/
    assert not (learners_project / ".pgdata").exists()


async def test_copied_alone_with_test_database_url_runs_there_and_leaves_database_url_alone(learners_project, databases):
    code, output = await run_pytest(learners_project, DATABASE_URL=url_of(databases["dev"]),
                                    TEST_DATABASE_URL=url_of(databases["test"]))

    assert code == pytest.ExitCode.OK, output
    assert " passed" in output.splitlines()[-1] and "failed" not in output
    assert await rows_of(databases["dev"]) == [LEARNERS_ROW]
    assert await rows_of(databases["test"]) is not None  # the tests ran there: their lifespan created the table
