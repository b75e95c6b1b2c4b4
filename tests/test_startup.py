"""Start-up: the database URL as a hosting provider prints it, and one line, not a
traceback, for whatever keeps the app from starting."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

import main
from main import asyncpg_url, create_tables, engine

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent


def test_the_tests_use_their_own_server_never_the_learners():
    # conftest.py set DATABASE_URL before main.py was imported: main.py never
    # started the zero-set-up server, whose data is the learner's .pgdata/
    assert main.local_postgres is None
    assert main.DATABASE_URL == os.environ["DATABASE_URL"]


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://ann:pw@db.example.com:5432/shop", "postgresql+asyncpg://ann:pw@db.example.com:5432/shop"),
        ("postgres://ann:pw@db.example.com/shop", "postgresql+asyncpg://ann:pw@db.example.com/shop"),
        ("postgresql+asyncpg://ann:pw@db.example.com/shop?ssl=require", "postgresql+asyncpg://ann:pw@db.example.com/shop?ssl=require"),
        ("postgresql://ann:pw@db.example.com/shop?sslmode=require", "postgresql+asyncpg://ann:pw@db.example.com/shop?ssl=require"),
        ("postgresql://ann:p%40ss@db.example.com/shop?sslmode=verify-full&channel_binding=prefer",
         "postgresql+asyncpg://ann:p%40ss@db.example.com/shop?ssl=verify-full"),
    ],
    ids=["postgresql", "postgres", "asyncpg-ssl", "sslmode", "quoted-password-and-channel-binding-prefer"],
)
def test_hosted_database_urls_mean_asyncpg(given, used):
    assert asyncpg_url(given).render_as_string(hide_password=False) == used


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("postgresql://ann@db.example.com/shop?sslmode=require&channel_binding=require", "remove channel_binding=require"),
        ("mysql://ann@db.example.com/shop", "must be a PostgreSQL URL"),
        ("sqlite:///users.db", "must be a PostgreSQL URL"),
        ("db.example.com:5432", "must be a PostgreSQL URL"),
    ],
    ids=["channel-binding-require", "mysql", "sqlite", "not-a-url"],
)
def test_database_url_that_cannot_work_stops_with_one_line(given, says):
    with pytest.raises(SystemExit, match=says):
        asyncpg_url(given)


async def connected_with_tls(url):
    """Connect with main.py's URL handling; return whether PostgreSQL says the connection is encrypted."""
    other = create_async_engine(asyncpg_url(url), connect_args={"timeout": 2})
    event.listen(other.sync_engine, "do_connect", main.connect_or_operational_error)  # as main.py's engine
    try:
        async with other.connect() as conn:
            return await conn.scalar(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await other.dispose()


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer"])
async def test_sslmode_that_allows_plain_connections_serves_on_a_server_without_tls(tcp_url, sslmode):
    assert await connected_with_tls(f"{tcp_url}?sslmode={sslmode}") is False


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
async def test_sslmode_that_requires_tls_refuses_a_server_without_it(tcp_url, sslmode):
    with pytest.raises(DBAPIError):
        await connected_with_tls(f"{tcp_url}?sslmode={sslmode}")


def run_main_py(database_url):
    """python main.py with this DATABASE_URL, expected to stop at start-up; return its exit code and stderr lines."""
    env = {**os.environ, "DATABASE_URL": database_url}
    app = subprocess.Popen([sys.executable, "main.py"], cwd=HERE, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = app.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(app.pid, signal.SIGKILL)  # it served instead: stop the reloader and its app
        raise
    return app.returncode, stderr.strip().splitlines()


def test_unreachable_database_stops_main_py_with_one_line():
    code, lines = run_main_py("postgresql://ann:s3cret@127.0.0.1:9/shop")

    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("Cannot use the database at postgresql+asyncpg://ann:***@127.0.0.1:9/shop: ")


def test_sslmode_require_on_a_server_without_tls_stops_main_py_with_one_line(tcp_url):
    code, lines = run_main_py(f"{tcp_url}?sslmode=require")

    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"Cannot use the database at {asyncpg_url(tcp_url)}?ssl=require: ")


@pytest.fixture
async def users_table_altered(started_app):
    """alter(sql): change the users table for one test (the model stays); undone by undo_sql afterwards."""
    undo = []

    async def alter(sql, undo_sql):
        async with engine.begin() as conn:
            await conn.execute(text(sql))
        undo.append(undo_sql)

    yield alter
    async with engine.begin() as conn:
        for sql in reversed(undo):
            await conn.execute(text(sql))


async def test_table_that_lacks_a_column_of_the_model_stops_with_one_line(users_table_altered):
    # what a learner meets after adding a field to User: create_all does not add the column
    await users_table_altered("ALTER TABLE users RENAME COLUMN name TO full_name",
                              "ALTER TABLE users RENAME COLUMN full_name TO name")

    with pytest.raises(SystemExit, match=r"has the columns \['email', 'full_name', 'id'\], the model \['email', 'id', 'name'\].*delete \.pgdata/"):
        await create_tables()


async def test_extra_nullable_column_in_the_table_is_fine(users_table_altered):
    await users_table_altered("ALTER TABLE users ADD COLUMN nickname text", "ALTER TABLE users DROP COLUMN nickname")

    await create_tables()  # no SystemExit


async def test_extra_not_null_column_without_default_stops_with_one_line(users_table_altered):
    await users_table_altered("ALTER TABLE users ADD COLUMN age integer NOT NULL", "ALTER TABLE users DROP COLUMN age")

    with pytest.raises(SystemExit, match=r"has the columns \['age', 'email', 'id', 'name'\]"):
        await create_tables()


async def test_simultaneous_startups_all_create_the_table(started_app):
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE users"))
    try:
        # eight start-ups at once, each on its own pooled connection, like uvicorn --workers 8
        await asyncio.gather(*(create_tables() for _ in range(8)))

        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM users")) == 0
    finally:
        await create_tables()  # the tests after this one need the table, whatever happened
