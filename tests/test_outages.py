"""The database restarts, stops, refuses, freezes or holds a lock: a prompt 503 with
Retry-After, never a wait without end, and the app serves again by itself.

Every failure here is real: a stopped or frozen server, a row lock held by the
test from a second connection, a deadlock, a terminated backend, a read-only session.
conftest.py sets DB_TIMEOUT=2 (4 on Windows, where a refused connection takes 2 s): each
wait ends after DB_TIMEOUT, a lock wait after half that.
"""

import asyncio
import contextlib
import os
import signal
import time
import uuid

import anyio
import asyncpg
import pytest
from sqlalchemy import event, make_url, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import main
from main import DB_TIMEOUT, engine
from test_main import ANN, BOB, create

pytestmark = pytest.mark.anyio

UNAVAILABLE = {"detail": "Database unavailable"}


def other_engine(url=None, *, connect_args=None, **options):
    """An engine on url (the test database by default) built as main.py builds its own, events included, with other settings."""
    other = create_async_engine(make_url(url or os.environ["DATABASE_URL"]).set(drivername="postgresql+asyncpg"),
                                connect_args={"timeout": DB_TIMEOUT, **(connect_args or {})}, **options)
    for name, listener in [("checkout", main.replace_closed_connection), ("do_connect", main.connect_or_operational_error),
                           ("handle_error", main.drop_broken_connection)]:
        event.listen(other.sync_engine, name, listener)
    return other


def assert_503(response):
    """A 503 that says to retry, and when."""
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert response.headers["Retry-After"] == "5"


@pytest.fixture
def reasons(caplog):
    """The reasons main.py logs with each 503, in order."""
    caplog.set_level("WARNING", logger="uvicorn.error")
    prefix = "503 Database unavailable: "
    return lambda: [r.getMessage().removeprefix(prefix) for r in caplog.records if r.getMessage().startswith(prefix)]


async def test_requests_right_after_a_postgres_restart_succeed(client, pg_ctl):
    ann = await create(client, ANN)
    await asyncio.gather(*(client.get(f"/users/{ann['id']}") for _ in range(20)))  # fill the pool

    await anyio.to_thread.run_sync(pg_ctl, "restart")

    sequential = [(await client.get(f"/users/{ann['id']}")).status_code for _ in range(5)]
    concurrent = await asyncio.gather(*(client.get(f"/users/{ann['id']}") for _ in range(20)))
    assert sequential == [200] * 5
    assert [r.status_code for r in concurrent] == [200] * 20


async def test_postgres_down_is_503_and_the_app_recovers(client, stored, pg_ctl, reasons):
    ann = await create(client, ANN)

    await anyio.to_thread.run_sync(pg_ctl, "stop")
    try:
        down = [
            await client.get(f"/users/{ann['id']}"),
            await client.get("/users"),
            await client.post("/users", json=BOB),
            await client.patch(f"/users/{ann['id']}", json={"name": "Anna"}),
            await client.delete(f"/users/{ann['id']}"),
        ]
    finally:
        await anyio.to_thread.run_sync(pg_ctl, "start")

    for response in down:
        assert_503(response)
    # the log says why, once per refused request: the server's socket is gone
    assert len(reasons()) == 5
    assert all(reason.startswith(("FileNotFoundError", "ConnectionRefusedError")) for reason in reasons()), reasons()
    assert (await client.get(f"/users/{ann['id']}")).json() == ann
    assert await stored() == [(1, "Ann", "ann@example.com")]  # nothing half-applied


async def timed(request):
    """Await a request; return its response and how long it took, in seconds."""
    start = time.monotonic()
    response = await request
    return response, time.monotonic() - start


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="freezes the server with SIGSTOP")
async def test_frozen_database_is_503_within_two_timeouts_and_the_app_recovers(client, stored, postmaster, reasons):
    ann = await create(client, ANN)
    await asyncio.gather(*(client.get(f"/users/{ann['id']}") for _ in range(5)))  # pooled connections
    processes = [postmaster, *postmaster.children()]

    for process in processes:
        process.suspend()  # SIGSTOP: what a frozen VM or a network partition looks like from here
    try:
        with anyio.fail_after(30):  # without the timeouts these would wait until the server resumes
            # more requests than the pool has connections: some use a pooled
            # one, some open a new one, some wait for the pool first
            requests = []
            for _ in range(3):
                requests += [client.get(f"/users/{ann['id']}"), client.get("/users"), client.post("/users", json=BOB),
                             client.patch(f"/users/{ann['id']}", json={"name": "Anna"}), client.delete(f"/users/{ann['id']}")]
            together = await asyncio.gather(*(timed(request) for request in requests))
            alone = await timed(client.get(f"/users/{ann['id']}"))
    finally:
        for process in processes:
            process.resume()

    for response, took in [*together, alone]:
        assert_503(response)
        assert took < 2 * DB_TIMEOUT + 1  # the README's bound
    # each log line names the wait that ran out, and how long it was
    waits = (f"OperationalError: (builtins.TimeoutError) no answer within {DB_TIMEOUT + 1} s",
             f"OperationalError: no connection within {DB_TIMEOUT} s",
             f"TimeoutError: QueuePool limit of size {engine.pool.size()} overflow 0 reached, connection timed out, timeout {DB_TIMEOUT:.2f}")
    assert len(reasons()) == len(requests) + 1
    assert all(reason.startswith(waits) for reason in reasons()), reasons()
    # the same process serves again at once: no pooled connection waits for the dead ones
    assert (await client.get(f"/users/{ann['id']}")).status_code == 200
    assert await stored() == [(1, "Ann", "ann@example.com")]


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="freezes the server with SIGSTOP")
async def test_pool_recycle_on_a_frozen_database_is_503_within_two_timeouts(client, postmaster, monkeypatch):
    # what the README recommends behind a firewall that drops idle connections:
    # create_async_engine(..., pool_recycle=N). Here every connection is older
    # than N, so each checkout closes its connection and opens a new one
    ann = await create(client, ANN)
    monkeypatch.setattr(engine.pool, "_recycle", 0)
    processes = [postmaster, *postmaster.children()]

    for process in processes:
        process.suspend()
    try:
        with anyio.fail_after(30):
            response, took = await timed(client.get(f"/users/{ann['id']}"))
    finally:
        for process in processes:
            process.resume()

    assert_503(response)
    assert took < 2 * DB_TIMEOUT + 1


@pytest.fixture
async def ann_locked(client):
    """Ann's row, locked FOR UPDATE by the test on a connection of its own until the test ends."""
    ann = await create(client, ANN)
    async with engine.connect() as holder:
        await holder.execute(text("SELECT * FROM users WHERE id = :id FOR UPDATE"), {"id": ann["id"]})
        yield ann
        await holder.rollback()


async def backend_waiting_for_a_lock() -> int:
    """The pid of a backend of this database that waits for a lock, as soon as there is one."""
    query = text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
    with anyio.fail_after(DB_TIMEOUT):
        while True:
            # a transaction per look: within one, pg_stat_activity stays as it was first read
            async with engine.connect() as conn:
                if (pid := await conn.scalar(query)) is not None:
                    return pid
            await asyncio.sleep(0.01)


async def test_row_locked_past_lock_timeout_is_503(client, stored, ann_locked, reasons):
    # lock_timeout (half of DB_TIMEOUT) ends the wait: PostgreSQL's 55P03
    response = await client.patch(f"/users/{ann_locked['id']}", json={"name": "Anna"})

    assert_503(response)
    assert reasons() == ["LockNotAvailableError: canceling statement due to lock timeout"]


async def test_backend_terminated_while_waiting_for_a_lock_is_503(client, ann_locked, reasons):
    patch = asyncio.create_task(client.patch(f"/users/{ann_locked['id']}", json={"name": "Anna"}))
    # the request's own backend, once it waits for the test's lock; then what
    # an administrator or a failover does to it (57P01, admin_shutdown)
    pid = await backend_waiting_for_a_lock()
    async with engine.connect() as admin:
        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    assert_503(await patch)
    # asyncpg reports the connection closed mid-request (08003), SQLAlchemy drops
    # it from the pool (connection_invalidated), and the log gives the root cause
    # (asyncpg 0.31 knows only that the connection closed)
    assert reasons() in (["AdminShutdownError: terminating connection due to administrator command"],
                         ["ConnectionDoesNotExistError: connection was closed in the middle of operation"])


async def test_deadlock_is_409_try_again_and_changes_nothing(client, stored, override_sessions, reasons):
    # a real deadlock (40P01): the test's transaction and the request's each
    # wait for the other, and PostgreSQL fails the one that finds it: the
    # request's, which looks after 0.5 s here where the test waits 1 s
    ann, bob = await create(client, ANN), await create(client, BOB)
    finder = other_engine(connect_args={"server_settings": {"deadlock_timeout": "500ms"}})
    try:
        async with finder.connect():
            pass
    except ProgrammingError as exc:
        await finder.dispose()
        if getattr(exc.orig, "sqlstate", None) == "42501":  # only a superuser may set deadlock_timeout
            pytest.skip("the test database does not allow setting deadlock_timeout")
        raise
    override_sessions(async_sessionmaker(finder, expire_on_commit=False))
    try:
        async with engine.connect() as test:
            # the test gives Ann the address Bob is about to ask for, and does not commit
            await test.execute(text("UPDATE users SET email = 'carol@example.com' WHERE id = :id"), {"id": ann["id"]})
            # the request locks Bob's row, then waits for the test's transaction
            # to end to learn whether the address is free
            patch = asyncio.create_task(client.patch(f"/users/{bob['id']}", json={"email": "carol@example.com"}))
            await backend_waiting_for_a_lock()
            # now the test waits for Bob's row: a cycle
            with anyio.fail_after(DB_TIMEOUT):
                await test.execute(text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": bob["id"]})
                response = await patch
            await test.rollback()
    finally:
        await finder.dispose()

    # not an outage: the request lost a race with a concurrent transaction, and sending it again works
    assert response.status_code == 409
    assert response.json() == {"detail": "Conflict with a concurrent request: try again"}
    assert reasons() == []
    assert await stored() == [(1, "Ann", "ann@example.com"), (2, "Bob", "bob@example.com")]


async def test_statement_past_statement_timeout_is_503(client, stored, reasons):
    # a trigger that makes every INSERT sleep longer than statement_timeout (57014)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE FUNCTION sleep_10s() RETURNS trigger LANGUAGE plpgsql AS "
                                "'BEGIN PERFORM pg_sleep(10); RETURN NEW; END'"))
        await conn.execute(text("CREATE TRIGGER slow_insert BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION sleep_10s()"))
    try:
        response = await client.post("/users", json=ANN)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER slow_insert ON users"))
            await conn.execute(text("DROP FUNCTION sleep_10s()"))

    assert_503(response)
    assert reasons() == ["QueryCanceledError: canceling statement due to statement timeout"]
    assert await stored() == []


async def test_read_only_database_is_503_and_its_connections_are_dropped(client, stored, override_sessions, reasons):
    # what an app meets when a failover has left its connections on a standby (25006):
    # the pool drops them, so the next request connects anew (to the new primary)
    read_only = other_engine(connect_args={"server_settings": {"default_transaction_read_only": "on"}})
    connections = []
    event.listen(read_only.sync_engine, "connect", lambda dbapi_connection, record: connections.append(dbapi_connection))
    override_sessions(async_sessionmaker(read_only, expire_on_commit=False))
    try:
        await client.get("/users")  # one connection, back in the pool
        response = await client.post("/users", json=ANN)
        await client.get("/users")
    finally:
        await read_only.dispose()

    assert_503(response)
    assert reasons() == ["ReadOnlySQLTransactionError: cannot execute INSERT in a read-only transaction"]
    assert len(connections) == 2  # the first was dropped after the 503; the last GET opened another
    assert await stored() == []


async def test_too_many_connections_is_503(client, override_sessions, reasons):
    # a role allowed no connection at all: PostgreSQL refuses it with 53300,
    # the code it uses when max_connections is reached. Roles are server-wide:
    # a name of this run's own, which no other run or user holds
    role = f"no_connections_{uuid.uuid4().hex[:12]}"
    async with engine.begin() as conn:
        try:
            await conn.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
        except ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) == "42501":  # insufficient privilege
                pytest.skip("the test database does not allow CREATE ROLE")
            raise
    refused = other_engine(connect_args={"user": role})
    override_sessions(async_sessionmaker(refused, expire_on_commit=False))
    try:
        response = await client.get("/users")
    finally:
        await refused.dispose()
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP ROLE {role}"))

    assert_503(response)
    assert reasons() == [f'TooManyConnectionsError: too many connections for role "{role}"']


async def test_no_free_pooled_connection_is_503_after_pool_timeout(client):
    # every connection of main.py's pool held here: a request waits pool_timeout
    # (DB_TIMEOUT) for one, then answers 503, rather than wait without end
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(engine.pool.size()):
            await stack.enter_async_context(engine.connect())
        with anyio.fail_after(DB_TIMEOUT + 5):
            response, took = await timed(client.get("/users"))

    assert_503(response)
    assert DB_TIMEOUT - 0.5 < took < DB_TIMEOUT + 1


async def test_the_pool_never_opens_more_than_pool_size_connections(client):
    # max_overflow=0: POOL_SIZE connections per process, never more, so that
    # (worker processes x POOL_SIZE) stays under the server's max_connections
    ann = await create(client, ANN)
    most = 0

    def count(*_):
        nonlocal most
        most = max(most, engine.pool.checkedout())

    event.listen(engine.sync_engine, "checkout", count)
    try:
        responses = await asyncio.gather(*(client.get(f"/users/{ann['id']}") for _ in range(3 * engine.pool.size())))
    finally:
        event.remove(engine.sync_engine, "checkout", count)

    assert {r.status_code for r in responses} == {200}
    assert most == engine.pool.size()  # all in use at once, and not one more


async def test_create_user_other_constraint_broken_is_a_500_not_a_409(client, stored):
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE users ADD CONSTRAINT name_not_root CHECK (name <> 'root')"))
    try:
        # ASGITransport raises what the app did not handle: FastAPI would answer 500
        with pytest.raises(IntegrityError, match="name_not_root"):
            await client.post("/users", json={"name": "root", "email": "root@example.com"})
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE users DROP CONSTRAINT name_not_root"))
    assert await stored() == []


async def test_other_os_errors_are_not_503s(client, override_sessions):
    # TimeoutError is an OSError, as asyncpg's are; only the database's count as an outage
    def not_the_database():
        raise TimeoutError("not the database")

    override_sessions(not_the_database)

    with pytest.raises(TimeoutError, match="not the database"):
        await client.get("/users")


def driver_error(asyncpg_error):
    """A DBAPIError as SQLAlchemy raises it for this asyncpg error: the adapter's error in orig, asyncpg's as its cause."""
    orig = Exception(str(asyncpg_error))
    orig.__cause__ = asyncpg_error
    return DBAPIError("SELECT 1", None, orig)


async def test_shutting_down_server_is_503_but_a_dropped_database_is_a_500():
    # 57P01 (admin_shutdown) passes: a retry reaches the server once it is back, or a standby
    # promoted; 57P04 (database_dropped) does not, and needs an administrator, so it stays a
    # 500 with its traceback. PostgreSQL sends 57P04 only to a connection racing the DROP
    # DATABASE, which no test can time: main.py's handler is called here with each error
    shutdown = await main.database_error(None, driver_error(asyncpg.exceptions.AdminShutdownError("terminating connection")))

    assert shutdown.status_code == 503
    with pytest.raises(DBAPIError, match="dropped"):
        await main.database_error(None, driver_error(asyncpg.exceptions.DatabaseDroppedError("database dropped")))
