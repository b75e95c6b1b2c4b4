"""Tests for main.py's handlers, in the tutorial's order, on a real PostgreSQL.

Each handler gets a test of its success and of its main error, and each test
checks what landed in the database, not only the response. How it works:

- Every test starts by emptying the tables, so the tests run on
  TEST_DATABASE_URL, a database meant for tests, never on DATABASE_URL. Here
  conftest.py starts a throwaway PostgreSQL server and sets it. Copied alone
  into your project, run them on a database of their own, e.g.
  `createdb app_test && TEST_DATABASE_URL=postgresql://postgres:postgres@localhost:5432/app_test pytest`;
  without TEST_DATABASE_URL they stop before the first test and say so.
- The tests are async functions run by anyio's pytest plugin (pytestmark):
  anyio comes with FastAPI already, so there is no pytest-asyncio to install.
- `client` calls the app in-process through httpx's ASGITransport: no port,
  no uvicorn, but every request goes through FastAPI and into PostgreSQL.
- An error inside the app reaches the test as the exception itself, not as a
  500 (so a bug shows with its traceback, and a test expecting one uses
  pytest.raises); ASGITransport(app=app, raise_app_exceptions=False) gives the 500.

More tests (hostile input, outages, races, the zero-set-up server, the
lessons behind each departure from the tutorial) are in tests/.
"""

import os

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text

# main.py reads DATABASE_URL once, as it is imported: point it at the test database first
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
if TEST_DATABASE_URL:
    os.environ["DATABASE_URL"] = TEST_DATABASE_URL
    import main
    from main import Base, app, engine, lifespan

pytestmark = pytest.mark.anyio

ANN = {"name": "Ann", "email": "ann@example.com"}
BOB = {"name": "Bob", "email": "bob@example.com"}


@pytest.fixture(scope="session", autouse=True)
def database_for_tests():
    """Stop the run before its first test when no database is given for tests: they would empty it."""
    if not TEST_DATABASE_URL:
        pytest.exit("Set TEST_DATABASE_URL to a PostgreSQL database the tests may empty, never your DATABASE_URL's: "
                    "postgresql://user:password@localhost:5432/app_test", returncode=pytest.ExitCode.USAGE_ERROR)
    if main.DATABASE_URL != TEST_DATABASE_URL:  # something imported main.py before this file, on another database
        pytest.exit("main.py was imported with DATABASE_URL before test_main.py could point it at TEST_DATABASE_URL: "
                    "set DATABASE_URL to TEST_DATABASE_URL for the tests", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def anyio_backend():
    """asyncio for every async test and fixture; session-wide, so that started_app and the engine's pool live on one loop."""
    return "asyncio"


@pytest.fixture(scope="session")
async def started_app():
    """The app with its lifespan run once: the table created, the pool closed at the end."""
    # entered by hand: httpx's ASGITransport sends requests only, never the lifespan's start-up and shutdown
    async with lifespan(app):
        yield app


@pytest.fixture
async def client(started_app):
    """An HTTP client calling the app in-process, on empty tables (every model's, yours too)."""
    async with engine.begin() as conn:
        tables = ", ".join(conn.dialect.identifier_preparer.format_table(table) for table in Base.metadata.sorted_tables)
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    async with AsyncClient(transport=ASGITransport(app=started_app), base_url="http://test") as client:
        yield client


@pytest.fixture
def stored(started_app):
    """Read the users table straight from the database, as (id, name, email) rows in id order."""

    async def read():
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT id, name, email FROM users ORDER BY id"))
            return [tuple(row) for row in result]

    return read


async def create(client, user):
    """POST a user that must be created; return the JSON answer."""
    response = await client.post("/users", json=user)
    assert response.status_code == 201, response.text
    return response.json()


def assert_422(response, loc, error_type, sent=None):
    """A 422 naming the failing field (loc) and the rule it broke (type), echoing nothing the client sent."""
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert {"loc": list(loc), "type": error_type} in [{"loc": e["loc"], "type": e["type"]} for e in errors], errors
    # FastAPI's own 422 adds "input" (what was sent), "ctx" and "url": main.py's handler leaves them out
    assert all(error.keys() == {"type", "loc", "msg"} for error in errors), errors
    if sent:
        assert not any(str(sent) in str(value) for error in errors for value in error.values()), errors


# --- 7. create_user ------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("body", "loc", "error_type"),
    [({"name": "Ann"}, ("body", "email"), "missing"),
     ({"name": "", "email": "ann@example.com"}, ("body", "name"), "string_too_short"),
     ({"name": "Ann", "email": "not-an-email"}, ("body", "email"), "value_error"),
     ({"id": 7, "name": "Ann", "email": "ann@example.com"}, ("body", "id"), "extra_forbidden")],
    ids=["no-email", "empty-name", "bad-email", "client-chosen-id"],
)
async def test_create_user_invalid_body_is_422(client, stored, body, loc, error_type):
    response = await client.post("/users", json=body)

    assert_422(response, loc, error_type, sent=body.get(loc[-1]))
    assert await stored() == []


# --- 7. update_user ------------------------------------------------------------
async def test_update_user_changes_only_the_fields_sent(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json={"name": "Anna"})

    assert response.status_code == 200
    assert response.json() == {"id": 1, "name": "Anna", "email": "ann@example.com"}
    assert await stored() == [(1, "Anna", "ann@example.com")]


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


async def test_update_user_null_field_is_422(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json={"name": None})

    assert_422(response, ("body", "name"), "string_type")
    assert await stored() == [(1, "Ann", "ann@example.com")]


# --- 8. fetch_users ------------------------------------------------------------
async def test_fetch_users_lists_users_in_id_order(client):
    ann = await create(client, ANN)
    bob = await create(client, BOB)
    # an UPDATE writes a new version of Ann's row after Bob's: without ORDER BY
    # id, PostgreSQL would read the table in that order and list Ann last
    ann = (await client.patch(f"/users/{ann['id']}", json={"name": "Anna"})).json()

    response = await client.get("/users")

    assert response.status_code == 200
    assert response.json() == [ann, bob]


async def test_fetch_users_pages_after_the_last_id_seen(client):
    users = [await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(5)]

    page = await client.get("/users", params={"limit": 2})
    next_page = await client.get("/users", params={"after_id": page.json()[-1]["id"], "limit": 2})

    assert page.json() == users[0:2]
    assert next_page.json() == users[2:4]


async def test_fetch_users_limit_over_100_is_422(client):
    response = await client.get("/users", params={"limit": 101})

    assert_422(response, ("query", "limit"), "less_than_equal")


# --- 8. read_user --------------------------------------------------------------
async def test_read_user_returns_the_user(client):
    ann = await create(client, ANN)

    response = await client.get(f"/users/{ann['id']}")

    assert response.status_code == 200
    assert response.json() == ann


async def test_read_user_missing_is_404(client):
    response = await client.get("/users/42")

    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


# --- 9. delete_user ------------------------------------------------------------
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
