"""Start-up: the database URL as a hosting provider prints it, and one line, not a
traceback, for whatever keeps the app from starting."""

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import certifi
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.exc import DBAPIError

import main
from main import create_tables, engine
from test_outages import other_engine

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent


async def test_the_tests_use_their_own_server_never_the_learners(started_app):
    # conftest.py set DATABASE_URL before main.py was imported: main.py never
    # started the zero-set-up server, whose data is the learner's .pgdata/
    assert main.local_postgres is None
    if os.environ.get("TEST_DATABASE_URL"):
        assert os.environ["DATABASE_URL"] == os.environ["TEST_DATABASE_URL"]
    else:  # the throwaway server conftest.py started, in the temporary folder
        async with engine.connect() as conn:
            data = Path(await conn.scalar(text("SHOW data_directory"))).resolve()
        assert data.is_relative_to(Path(tempfile.gettempdir()).resolve()), data
        assert not data.is_relative_to(HERE), data


async def session_settings(url, *settings):
    """Connect as main.py does (its URL handling, its events); return these settings of the session."""
    other = other_engine(url)
    try:
        async with other.connect() as conn:
            return [await conn.scalar(text(f"SELECT {setting}")) for setting in settings]
    finally:
        await other.dispose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
async def test_hosted_database_url_forms_connect(tcp_url, scheme):
    url = tcp_url.replace("postgresql://", f"{scheme}://", 1)

    assert await session_settings(url, "current_user") == ["postgres"]


async def test_libpq_parameters_in_the_url_reach_the_connection(tcp_url):
    # what providers and learners add to a URL, read by asyncpg as psql reads it
    url = (f"{tcp_url}?sslmode=disable&application_name=learner-app&options=-c%20search_path%3Dpublic"
           "&target_session_attrs=any&connect_timeout=10")

    assert await session_settings(url, "current_setting('application_name')", "current_setting('search_path')",
                                  "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())") == ["learner-app", "public", False]


async def test_libpq_parameters_reach_every_connection_not_only_the_first(tcp_url):
    other = other_engine(f"{tcp_url}?application_name=learner-app")
    try:
        async with other.connect() as first, other.connect() as second:
            names = [await conn.scalar(text("SELECT current_setting('application_name')")) for conn in (first, second)]
    finally:
        await other.dispose()

    assert names == ["learner-app", "learner-app"]


@pytest.mark.parametrize(
    "query",
    ["ssl=disable", "ssl=prefer", "prepared_statement_cache_size=0", "ssl=prefer&prepared_statement_cache_size=0",
     "command_timeout=10"],
)
async def test_asyncpg_parameters_in_the_url_serve_as_with_the_tutorials_engine(tcp_url, query):
    # the tutorial's own create_async_engine(DATABASE_URL) hands these to asyncpg.connect: main.py too
    url = f"{tcp_url.replace('postgresql://', 'postgresql+asyncpg://', 1)}?{query}"
    tutorial = create_async_engine(url)
    try:
        async with tutorial.connect() as conn:
            tutorials = await conn.scalar(text("SELECT current_user"))
    finally:
        await tutorial.dispose()

    assert await session_settings(url, "current_user") == [tutorials] == ["postgres"]


@pytest.mark.parametrize("query", ["ssl=require", "sslmode=require"])
async def test_tls_required_by_asyncpg_or_libpq_parameter_refuses_a_server_without_it(tcp_url, query):
    url = f"{tcp_url.replace('postgresql://', 'postgresql+asyncpg://', 1)}?{query}"

    with pytest.raises(DBAPIError, match="rejected SSL upgrade"):
        await session_settings(url, "1")


def test_engine_url_names_the_database_and_hides_the_password():
    # what Alembic's env.py and log lines read: the server and database, never the password
    shown = str(other_engine("postgresql://ann:s3cret@db.example.com:6543/shop?sslmode=require").url)

    assert shown == "postgresql+asyncpg://ann:***@db.example.com:6543/shop?sslmode=require"


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer"])
async def test_sslmode_that_allows_plain_connections_serves_on_a_server_without_tls(tcp_url, sslmode):
    assert await session_settings(f"{tcp_url}?sslmode={sslmode}", "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())") == [False]


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
async def test_sslmode_that_requires_tls_refuses_a_server_without_it(tcp_url, sslmode):
    # verify-ca and verify-full check the server's certificate against
    # sslrootcert (here certifi's bundle of public CAs, which httpx brings)
    ca = f"&sslrootcert={certifi.where()}" if sslmode.startswith("verify") else ""
    # the server answers "no TLS here": asyncpg refuses to go on unencrypted
    with pytest.raises(DBAPIError, match="rejected SSL upgrade"):
        await session_settings(f"{tcp_url}?sslmode={sslmode}{ca}", "1")


async def test_verify_full_without_a_root_certificate_is_refused(tcp_url, monkeypatch):
    monkeypatch.setenv("HOME", tempfile.gettempdir())  # no ~/.postgresql/root.crt
    with pytest.raises(DBAPIError, match="root certificate file .* does not exist"):
        await session_settings(f"{tcp_url}?sslmode=verify-full", "1")


def run_main_py(database_url):
    """python main.py with this DATABASE_URL, expected to stop at start-up; return its exit code and stderr lines.

    uvicorn.run is replaced, so that if start-up ever stops failing, the test
    fails at once instead of serving on the learner's port 8000."""
    # DB_TIMEOUT 10 s, not the tests' 2 s: on Windows a refused connect takes about 2 s
    env = {**os.environ, "DATABASE_URL": database_url, "DB_TIMEOUT": "10"}
    never_serve = "import runpy, sys, uvicorn; uvicorn.run = lambda *a, **k: sys.exit('served'); runpy.run_path('main.py', run_name='__main__')"
    app = subprocess.run([sys.executable, "-c", never_serve], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
    return app.returncode, app.stderr.strip().splitlines()


def test_unreachable_database_stops_main_py_with_one_line():
    code, lines = run_main_py("postgresql://ann:s3cret@127.0.0.1:9/shop")

    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("Cannot use the database: ConnectionRefusedError: ")
    assert "s3cret" not in lines[0]


def test_main_py_copied_alone_without_database_url_asks_for_it(tmp_path):
    # a learner's project: main.py without local_postgres.py beside it
    (tmp_path / "main.py").write_text((HERE / "main.py").read_text(encoding="utf-8"), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    app = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert app.returncode == 1
    assert app.stderr.strip().splitlines() == [
        "Set DATABASE_URL, e.g. postgresql://user:password@localhost:5432/dbname (No module named 'local_postgres')"]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("{tcp_url}?sslmode=require", "Cannot use the database: ConnectionError: PostgreSQL server at "),
        ("{tcp_url}?ssl=require", "Cannot use the database: ConnectionError: PostgreSQL server at "),
        ("{tcp_url}?sslmode=disable&channel_binding=require",
         'Cannot use the database: UndefinedObjectError: unrecognized configuration parameter "channel_binding"'),
        ("{tcp_url}?sslmode=requir", "Cannot use the database: ClientConfigurationError: `sslmode` parameter must be one of"),
        ("{tcp_url}?connect_timeout=ten", "Cannot use the database: ValueError: could not convert string to float: 'ten'"),
        ("{tcp_url}?statement_cache_size=0", "Cannot use the database: TypeError: "),
        ("postgresql://postgres@127.0.0.1:5432x/postgres", "DATABASE_URL: invalid literal for int() with base 10: '5432x'"),
        ("mysql://postgres@127.0.0.1/postgres", "Cannot use the database: ValueError: DATABASE_URL names mysql://, not PostgreSQL"),
        ("db.example.com:5432", "DATABASE_URL: Could not parse SQLAlchemy URL"),
    ],
    ids=["sslmode-require-without-tls", "ssl-require-without-tls", "channel-binding", "sslmode-typo", "connect-timeout-typo",
         "asyncpg-number-as-text",
         "port-typo", "mysql", "not-a-url"],
)
def test_database_url_that_cannot_work_stops_main_py_with_one_line(tcp_url, given, says):
    code, lines = run_main_py(given.format(tcp_url=tcp_url))

    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(says), lines[0]


async def test_table_that_lacks_a_column_of_the_model_stops_with_one_line(altered):
    # what a learner meets after adding a field to User: create_all does not add the column
    await altered("ALTER TABLE users RENAME COLUMN name TO full_name",
                              "ALTER TABLE users RENAME COLUMN full_name TO name")

    with pytest.raises(SystemExit, match=r"has the columns \['email', 'full_name', 'id'\], the model \['email', 'id', 'name'\]: migrate it"):
        await create_tables()


async def test_extra_nullable_column_in_the_table_is_fine(altered):
    await altered("ALTER TABLE users ADD COLUMN nickname text", "ALTER TABLE users DROP COLUMN nickname")

    await create_tables()  # no SystemExit


async def test_extra_not_null_column_without_default_stops_with_one_line(altered):
    await altered("ALTER TABLE users ADD COLUMN age integer NOT NULL", "ALTER TABLE users DROP COLUMN age")

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
