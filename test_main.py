"""Tests for main.py, against a real PostgreSQL server (see conftest.py).

One test per handler's success path and per error branch. Each checks what
landed in the database, not only the response.
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from main import INT_MAX, app, async_session, create_tables, engine, lifespan

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
ANN = {"name": "Ann", "email": "ann@example.com"}
BOB = {"name": "Bob", "email": "bob@example.com"}


@pytest.fixture(scope="session")
def anyio_backend():
    """Run every async test and fixture on one asyncio event loop."""
    return "asyncio"


@pytest.fixture(scope="session")
async def started_app():
    """The app with its lifespan run: tables created, engine disposed at the end."""
    async with lifespan(app):
        yield app


@pytest.fixture
async def client(started_app):
    """An HTTP client calling the app in-process, on an empty users table."""
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE users RESTART IDENTITY"))
    async with AsyncClient(transport=ASGITransport(app=started_app), base_url="http://test") as client:
        yield client


@pytest.fixture
def stored(started_app):
    """Read the users table straight from the database, as (id, name, email) rows."""

    async def read():
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT id, name, email FROM users ORDER BY id"))
            return [tuple(row) for row in result]

    return read


async def create(client, user):
    response = await client.post("/users", json=user)
    assert response.status_code == 201, response.text
    return response.json()


# --- create_user -------------------------------------------------------------
async def test_create_user_is_201_and_stores_the_row(client, stored):
    response = await client.post("/users", json=ANN)

    assert response.status_code == 201
    assert response.json() == {"id": 1, **ANN}
    assert await stored() == [(1, "Ann", "ann@example.com")]


async def test_create_user_duplicate_email_is_409(client, stored):
    await create(client, ANN)

    response = await client.post("/users", json={"name": "Other Ann", "email": ANN["email"]})

    assert response.status_code == 409
    assert response.json() == {"detail": "Email already registered"}
    assert await stored() == [(1, "Ann", "ann@example.com")]


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


async def test_create_user_email_domain_case_is_the_same_address(client, stored):
    await create(client, {"name": "Ann", "email": "ann@Example.COM"})

    response = await client.post("/users", json={"name": "Ann 2", "email": "ann@example.com"})

    assert response.status_code == 409
    assert await stored() == [(1, "Ann", "ann@example.com")]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Ann"},
        {"email": "ann@example.com"},
        {"name": "", "email": "ann@example.com"},
        {"name": "x" * 101, "email": "ann@example.com"},
        {"name": "Ann", "email": "not-an-email"},
        {"name": None, "email": "ann@example.com"},
        {"name": 5, "email": "ann@example.com"},
        {"name": "Ann\x00", "email": "ann@example.com"},
        {"id": 7, "name": "Ann", "email": "ann@example.com"},
    ],
    ids=["no-email", "no-name", "empty-name", "long-name", "bad-email",
         "null-name", "number-name", "nul-in-name", "client-chosen-id"],
)
async def test_create_user_invalid_body_is_422(client, stored, body):
    response = await client.post("/users", json=body)

    assert response.status_code == 422
    assert "detail" in response.json()
    assert await stored() == []


def email_of_length(length):
    """A valid address of exactly `length` characters: 64 before the @, labels of at most 63."""
    domain = ".".join(["d" * 63, "d" * 63, "d" * (length - 64 - 1 - 63 - 1 - 63 - 1 - 4)]) + ".com"
    return "a" * 64 + "@" + domain


async def test_create_user_email_of_254_characters_is_stored(client, stored):
    email = email_of_length(254)

    response = await client.post("/users", json={"name": "Ann", "email": email})

    assert response.status_code == 201
    assert await stored() == [(1, "Ann", email)]


async def test_create_user_email_of_255_characters_is_422(client, stored):
    response = await client.post("/users", json={"name": "Ann", "email": email_of_length(255)})

    assert response.status_code == 422
    assert await stored() == []


async def test_create_user_stores_quotes_sql_and_unicode_verbatim(client, stored):
    name = "Robert'); DROP TABLE users;-- 🙂 שלום"

    created = await create(client, {"name": name, "email": "bobby@example.com"})

    assert created["name"] == name
    assert await stored() == [(1, name, "bobby@example.com")]


async def test_create_user_concurrent_duplicates_give_one_201(client, stored):
    responses = await asyncio.gather(
        *(client.post("/users", json={"name": f"Racer {i}", "email": "race@example.com"}) for i in range(20))
    )

    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 19
    rows = await stored()
    assert len(rows) == 1 and rows[0][2] == "race@example.com"


# --- fetch_users -------------------------------------------------------------
async def test_fetch_users_lists_users_in_id_order(client):
    ann = await create(client, ANN)
    bob = await create(client, BOB)

    response = await client.get("/users")

    assert response.status_code == 200
    assert response.json() == [ann, bob]


async def test_fetch_users_pages_after_the_last_id_seen(client):
    users = [await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(5)]

    page = await client.get("/users", params={"limit": 2})
    next_page = await client.get("/users", params={"after_id": page.json()[-1]["id"], "limit": 2})

    assert page.json() == users[0:2]
    assert next_page.json() == users[2:4]


async def test_fetch_users_pages_walk_every_user_once(client):
    users = [await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(7)]
    seen, after_id = [], 0

    while page := (await client.get("/users", params={"after_id": after_id, "limit": 3})).json():
        seen += page
        after_id = page[-1]["id"]

    assert seen == users


async def test_fetch_users_default_page_is_50(client):
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (name, email) SELECT 'U' || g, 'u' || g || '@example.com' FROM generate_series(1, 60) g")
        )

    response = await client.get("/users")

    assert [u["id"] for u in response.json()] == list(range(1, 51))


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"after_id": -1}, {"after_id": INT_MAX + 1}, {"after_id": 2**63},
     {"limit": "ten"}, {"after_id": 1.5}],
)
async def test_fetch_users_bad_paging_is_422(client, params):
    response = await client.get("/users", params=params)

    assert response.status_code == 422
    assert "detail" in response.json()


# --- read_user ---------------------------------------------------------------
async def test_read_user_returns_the_user(client):
    ann = await create(client, ANN)

    response = await client.get(f"/users/{ann['id']}")

    assert response.status_code == 200
    assert response.json() == ann


async def test_read_user_missing_is_404(client):
    response = await client.get("/users/42")

    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


@pytest.mark.parametrize("user_id", ["0", "-1", str(INT_MAX + 1), str(2**63), "99999999999999999999999", "1.5", "abc"])
async def test_read_user_id_outside_integer_range_is_422(client, user_id):
    response = await client.get(f"/users/{user_id}")

    assert response.status_code == 422
    assert "detail" in response.json()


async def test_read_user_largest_integer_id_is_404(client):
    response = await client.get(f"/users/{INT_MAX}")

    assert response.status_code == 404


# --- update_user -------------------------------------------------------------
async def test_update_user_changes_only_the_fields_sent(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json={"name": "Anna"})

    assert response.status_code == 200
    assert response.json() == {"id": 1, "name": "Anna", "email": "ann@example.com"}
    assert await stored() == [(1, "Anna", "ann@example.com")]


async def test_update_user_changes_email(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json={"email": "anna@example.com"})

    assert response.status_code == 200
    assert await stored() == [(1, "Ann", "anna@example.com")]


async def test_update_user_missing_is_404(client, stored):
    await create(client, ANN)

    response = await client.patch("/users/42", json={"name": "Nobody"})

    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}
    assert await stored() == [(1, "Ann", "ann@example.com")]


async def test_update_user_to_taken_email_is_409(client, stored):
    await create(client, ANN)
    bob = await create(client, BOB)

    response = await client.patch(f"/users/{bob['id']}", json={"email": ANN["email"]})

    assert response.status_code == 409
    assert response.json() == {"detail": "Email already registered"}
    assert await stored() == [(1, "Ann", "ann@example.com"), (2, "Bob", "bob@example.com")]


@pytest.mark.parametrize(
    "body",
    [{"name": None}, {"email": None}, {"name": ""}, {"email": "nope"}, {"id": 2}, {"name": ["Ann"]}],
    ids=["null-name", "null-email", "empty-name", "bad-email", "id", "list-name"],
)
async def test_update_user_invalid_body_is_422(client, stored, body):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json=body)

    assert response.status_code == 422
    assert await stored() == [(1, "Ann", "ann@example.com")]


# --- delete_user -------------------------------------------------------------
async def test_delete_user_is_204_and_removes_the_row(client, stored):
    ann = await create(client, ANN)
    await create(client, BOB)

    response = await client.delete(f"/users/{ann['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert await stored() == [(2, "Bob", "bob@example.com")]


async def test_delete_user_missing_is_404(client, stored):
    await create(client, ANN)

    response = await client.delete("/users/42")

    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}
    assert await stored() == [(1, "Ann", "ann@example.com")]


# --- odd and hostile requests -------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [b'{"name": "Ann", "email":', b'[{"name": "Ann", "email": "ann@example.com"}]', b'"Ann"', b"", b"\xff\xfe"],
    ids=["truncated-json", "json-array", "json-string", "empty", "utf16-byte-order-mark"],
)
async def test_create_user_malformed_body_is_422(client, stored, content):
    response = await client.post("/users", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert "detail" in response.json()
    assert await stored() == []


# Bytes the JSON decoder cannot read as text at all: FastAPI answers 400, as
# the schema documents ("\xc3\x28" opens a two-byte UTF-8 character and breaks it).
@pytest.mark.parametrize(
    "content", [b"\xc3\x28", b'{"name": "\xff"}', b"[" * 60_000], ids=["not-utf8", "not-utf8-in-a-string", "nested-too-deep"]
)
async def test_create_user_unreadable_body_is_400(client, stored, content):
    response = await client.post("/users", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
    assert await stored() == []


async def test_update_user_body_not_utf8_is_400_and_changes_nothing(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", content=b"\xc3\x28", headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert await stored() == [(1, "Ann", "ann@example.com")]


HUGE_BODY = b'{"name": "' + b"x" * 10_000_000 + b'", "email": "big@example.com"}'


async def test_create_user_huge_body_is_413(client, stored):
    response = await client.post("/users", content=HUGE_BODY, headers={"Content-Type": "application/json"})

    # refused from its Content-Length header, before reading the body; this
    # answer comes from Starlette, in plain text (see the README)
    assert response.status_code == 413
    assert response.text == "Content Too Large"
    assert await stored() == []


async def test_create_user_huge_streamed_body_is_413(client, stored):
    async def chunks():
        for start in range(0, len(HUGE_BODY), 65536):
            yield HUGE_BODY[start:start + 65536]

    response = await client.post("/users", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await stored() == []


async def test_create_user_odd_content_length_is_not_a_500(client, stored):
    headers = {"Content-Type": "application/json", "Content-Length": "²".encode("latin-1")}

    response = await client.post("/users", content=b"{}", headers=headers)

    assert response.status_code == 422
    assert await stored() == []


async def test_update_user_huge_body_is_413_and_changes_nothing(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", content=HUGE_BODY, headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.text == "Content Too Large"
    assert await stored() == [(1, "Ann", "ann@example.com")]


# --- concurrency -------------------------------------------------------------
async def test_create_user_concurrent_distinct_emails_all_land(client, stored):
    responses = await asyncio.gather(
        *(client.post("/users", json={"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(30))
    )

    assert [r.status_code for r in responses] == [201] * 30
    assert sorted(row[2] for row in await stored()) == sorted(f"u{i}@example.com" for i in range(30))


async def test_update_user_concurrent_email_changes_leave_one_of_them(client, stored):
    ann = await create(client, ANN)
    emails = [f"ann{i}@example.com" for i in range(10)]

    responses = await asyncio.gather(*(client.patch(f"/users/{ann['id']}", json={"email": e}) for e in emails))

    assert [r.status_code for r in responses] == [200] * 10
    [(_, _, email)] = await stored()
    assert email in emails


async def test_delete_racing_read_and_update_gives_404s_not_500s(client, stored):
    ids = [(await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}))["id"] for i in range(10)]
    requests = []
    for user_id in ids:
        requests += [
            client.get(f"/users/{user_id}"),
            client.patch(f"/users/{user_id}", json={"name": "Changed"}),
            client.delete(f"/users/{user_id}"),
            client.delete(f"/users/{user_id}"),
            client.patch(f"/users/{user_id}", json={"name": "Changed again"}),
        ]

    responses = await asyncio.gather(*requests)

    assert {r.status_code for r in responses} <= {200, 204, 404}
    assert sum(r.status_code == 204 for r in responses) == 10  # each user deleted once
    assert await stored() == []


# --- database restarts and outages ---------------------------------------------
async def test_requests_right_after_a_postgres_restart_succeed(client, pg_ctl):
    ann = await create(client, ANN)
    await asyncio.gather(*(client.get(f"/users/{ann['id']}") for _ in range(20)))  # fill the pool

    await anyio.to_thread.run_sync(pg_ctl, "restart")

    sequential = [(await client.get(f"/users/{ann['id']}")).status_code for _ in range(5)]
    concurrent = await asyncio.gather(*(client.get(f"/users/{ann['id']}") for _ in range(20)))
    assert sequential == [200] * 5
    assert [r.status_code for r in concurrent] == [200] * 20


async def test_postgres_down_is_503_and_the_app_recovers(client, stored, pg_ctl, caplog):
    ann = await create(client, ANN)
    caplog.set_level("WARNING", logger="uvicorn.error")

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

    assert [r.status_code for r in down] == [503] * 5
    assert all(r.json() == {"detail": "Database unavailable"} for r in down)
    # the log says why, once per refused request
    outage_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("503 Database unavailable: ")]
    assert len(outage_lines) == 5
    assert (await client.get(f"/users/{ann['id']}")).json() == ann
    assert await stored() == [(1, "Ann", "ann@example.com")]  # nothing half-applied


async def test_too_many_connections_is_503(client):
    # a role allowed no connection at all: PostgreSQL refuses it with 53300,
    # the code it uses when max_connections is reached
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE ROLE no_connections LOGIN CONNECTION LIMIT 0"))
    except ProgrammingError:
        pytest.skip("the test database does not allow CREATE ROLE")
    refused = create_async_engine(engine.url.set(username="no_connections"))
    async_session.configure(bind=refused)
    try:
        response = await client.get("/users")
    finally:
        async_session.configure(bind=engine)
        await refused.dispose()
        async with engine.begin() as conn:
            await conn.execute(text("DROP ROLE no_connections"))

    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}


async def test_no_free_pooled_connection_is_503(client):
    # a pool of one connection, held here, and a wait of 0.1 s instead of 30 s
    small = create_async_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    async_session.configure(bind=small)
    try:
        async with small.connect():
            response = await client.get("/users")
    finally:
        async_session.configure(bind=engine)
        await small.dispose()

    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}


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


async def test_other_os_errors_in_a_route_are_not_503s(client):
    # TimeoutError and FileNotFoundError are OSErrors; only the database's count as an outage
    @app.get("/broken", include_in_schema=False)
    async def broken():
        raise TimeoutError("not the database")

    try:
        with pytest.raises(TimeoutError):
            await client.get("/broken")
    finally:
        app.router.routes.pop()


def test_unreachable_database_at_startup_exits_with_one_line():
    env = {**os.environ, "DATABASE_URL": "postgresql+asyncpg://ann:s3cret@127.0.0.1:9/shop"}

    result = subprocess.run(
        [sys.executable, "main.py"], cwd=HERE, env=env,
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "127.0.0.1" in lines[0] and "shop" in lines[0]
    assert "s3cret" not in result.stderr


# --- the OpenAPI schema that /docs shows ---------------------------------------
async def test_openapi_documents_error_responses(client):
    paths = (await client.get("/openapi.json")).json()["paths"]

    assert set(paths["/users"]["post"]["responses"]) == {"201", "400", "409", "413", "422", "503"}
    assert set(paths["/users"]["get"]["responses"]) == {"200", "422", "503"}
    assert set(paths["/users/{user_id}"]["get"]["responses"]) == {"200", "404", "422", "503"}
    assert set(paths["/users/{user_id}"]["patch"]["responses"]) == {"200", "400", "404", "409", "413", "422", "503"}
    assert set(paths["/users/{user_id}"]["delete"]["responses"]) == {"204", "404", "422", "503"}


async def test_openapi_update_fields_are_optional_but_not_nullable(client):
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["UserUpdate"]

    assert "required" not in schema
    assert schema["properties"]["name"]["type"] == "string"
    assert schema["properties"]["email"]["type"] == "string"


# --- the zero-set-up server, local_postgres.py ----------------------------------
@pytest.fixture
def project_copy(tmp_path):
    """main.py and local_postgres.py in a temporary folder, so their .pgdata/ is a throwaway."""
    for name in ("main.py", "local_postgres.py"):
        shutil.copy(HERE / name, tmp_path)
    yield tmp_path
    for process in psutil.Process().children(recursive=True):
        process.kill()  # an app a failed test left running
    if (tmp_path / ".pgdata" / "postmaster.pid").exists():
        postgres_of(tmp_path).terminate()


def postgres_of(folder):
    """The PostgreSQL server process running on folder/.pgdata (the first line of postmaster.pid)."""
    return psutil.Process(int((folder / ".pgdata" / "postmaster.pid").read_text().split()[0]))


def start_app(folder, *uvicorn_options, env=None):
    """Run uvicorn main:app in folder, by default with DATABASE_URL unset; return it and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if env is None:
        env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), *uvicorn_options],
        cwd=folder, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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


@pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals (kill -9, Ctrl+C)")
def test_local_postgres_outlives_a_killed_app_and_stops_with_the_last_one(project_copy):
    first, url = start_app(project_copy)
    httpx.post(f"{url}/users", json=ANN).raise_for_status()
    server = postgres_of(project_copy)

    first.kill()  # kill -9: no chance to stop the server
    first.wait()
    assert server.is_running()

    second, url = start_app(project_copy, "--workers", "2")
    rows = httpx.get(f"{url}/users").json()
    os.killpg(second.pid, signal.SIGINT)  # Ctrl+C in its terminal
    second.wait(timeout=30)

    assert rows == [{"id": 1, **ANN}]  # the second app joined the same server and data
    server.wait(timeout=10)  # raises psutil.TimeoutExpired if the server is still running


# --- the READMEs' examples --------------------------------------------------------
def curl_examples(readme):
    """Each curl command in a README, with the answer shown under it (a line starting "# ")."""
    lines = (HERE / readme).read_text(encoding="utf-8").splitlines()
    examples = []
    for start, line in enumerate(lines):
        if line.startswith("curl "):
            end = start
            while lines[end].endswith("\\"):
                end += 1
            assert lines[end + 1].startswith("# "), f"{readme}: no answer shown under {line!r}"
            examples.append(("\n".join(lines[start:end + 1]), lines[end + 1].removeprefix("# ")))
    return examples


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="runs the examples with bash and curl")
@pytest.mark.parametrize("readme", ["README.md", "README.ru.md"])
async def test_readme_curl_examples_answer_as_shown(client, readme):
    examples = curl_examples(readme)
    app_process, url = await anyio.to_thread.run_sync(lambda: start_app(HERE, env=dict(os.environ)))
    try:
        answers = []
        for command, _ in examples:  # one after another, on the empty table the client fixture left
            command = command.replace("http://127.0.0.1:8000", url)
            result = await anyio.run_process(["bash", "-c", command])
            answers.append(result.stdout.decode().rstrip("\n"))
    finally:
        app_process.terminate()
        app_process.wait(timeout=30)

    assert len(examples) == 7
    assert answers == [shown for _, shown in examples]
