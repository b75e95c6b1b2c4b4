"""docs/second-model.md, run: its Python blocks pasted into main.py where the page says, the grown app
started in a subprocess (FastAPI's TestClient) on a database of its own on the test server, and each answer
the page gives checked, with what landed in the tables."""

import ast
import itertools
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import anyio
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from main import engine

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent
DOC = (HERE / "docs" / "second-model.md").read_text(encoding="utf-8")
CASCADE = 'ForeignKey("users.id", ondelete="CASCADE")'

ANN = {"name": "Ann", "email": "ann@example.com"}
BOB = {"name": "Bob", "email": "bob@example.com"}

# with the grown main.py as main: TestClient runs its lifespan, sends the requests read from stdin, prints the answers
SERVE = """
import json, sys
from fastapi.testclient import TestClient
from main import app
with TestClient(app) as client:
    answers = [client.request(method, url, json=body) for method, url, body in json.load(sys.stdin)]
print(json.dumps([[a.status_code, a.json() if a.content else None] for a in answers]))
"""
# python main.py, as a learner starts it, with uvicorn.run replaced: if start-up passes, it stops at once
NEVER_SERVE = "import runpy, sys, uvicorn; uvicorn.run = lambda *a, **k: sys.exit('served'); runpy.run_path('main.py', run_name='__main__')"


def code_blocks(language):
    """The page's code blocks fenced as ```language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC, re.MULTILINE | re.DOTALL)


def grown_main_py(cascade=True):
    """main.py with the page's code where the page says: its imports after main.py's, the rest before the marker line."""
    imports, code = code_blocks("python")
    assert all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.parse(imports).body), imports
    marker = re.search(r"right before the line\s+`([^`]+)`", DOC)[1]
    lines = (HERE / "main.py").read_text(encoding="utf-8").splitlines(keepends=True)
    at_marker = [i for i, line in enumerate(lines) if line.startswith(marker)]
    assert len(at_marker) == 1, f"docs/second-model.md says to paste before {marker!r}, which main.py has {len(at_marker)} times"
    body = ast.parse("".join(lines)).body
    first = 1 if isinstance(body[0], ast.Expr) else 0  # after the module's docstring
    *_, last_import = itertools.takewhile(lambda node: isinstance(node, (ast.Import, ast.ImportFrom)), body[first:])
    if not cascade:  # the page's other choice: a foreign key without ondelete
        assert code.count(CASCADE) == 1
        code = code.replace(CASCADE, 'ForeignKey("users.id")')
    lines.insert(at_marker[0], code + "\n\n")
    lines.insert(last_import.end_lineno, imports)
    return "".join(lines)


@pytest.fixture
async def database(started_app):
    """A database of its own on the test server, dropped afterwards: (its URL, an engine on it)."""
    name = f"second_model_{secrets.token_hex(4)}"
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE runs outside a transaction
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient privilege: TEST_DATABASE_URL without CREATEDB
            raise
        pytest.skip(f"needs CREATE DATABASE on the test server: {exc.orig}")
    url = make_url(os.environ["TEST_DATABASE_URL"]).set(database=name).render_as_string(hide_password=False)
    own = create_async_engine(url, poolclass=NullPool)
    try:
        yield url, own
    finally:
        await own.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
def grown(tmp_path, database):
    """run(requests, cascade=True): the grown app answers [method, url, json] requests in a subprocess; returns [status, json]."""
    shutil.copy(HERE / "local_postgres.py", tmp_path)
    env = {**os.environ, "DATABASE_URL": database[0]}

    async def run(requests, cascade=True):
        (tmp_path / "main.py").write_text(grown_main_py(cascade), encoding="utf-8")
        result = await anyio.run_process([sys.executable, "-c", SERVE], input=json.dumps(requests).encode(),
                                         cwd=tmp_path, env=env, check=False)
        assert result.returncode == 0, result.stderr.decode()
        return [tuple(answer) for answer in json.loads(result.stdout)]

    return run


@pytest.fixture
def rows(database):
    """rows(table): the table's rows in the grown app's database, in id order."""

    async def read(table):
        async with database[1].connect() as conn:
            return [tuple(row) for row in await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]

    return read


def post(user_id, title="Hello", content="My first post"):
    """A POST /posts request."""
    return ["POST", "/posts", {"user_id": user_id, "title": title, "content": content}]


async def test_create_post_is_201_and_stores_the_row(grown, rows):
    answers = await grown([["POST", "/users", ANN], post(1)])

    assert answers[1] == (201, {"id": 1, "user_id": 1, "title": "Hello", "content": "My first post"})
    assert await rows("posts") == [(1, 1, "Hello", "My first post")]


async def test_create_post_for_a_user_that_does_not_exist_is_409_with_postgresqls_detail(grown, rows):
    answers = await grown([["POST", "/users", ANN], post(99)])

    assert answers[1] == (409, {"detail": 'Key (user_id)=(99) is not present in table "users".'})
    assert await rows("posts") == []
    assert f"`{json.dumps(answers[1][1])}`" in DOC  # the page shows it


async def test_create_post_values_an_integer_or_text_column_cannot_hold_are_422_or_400(grown, rows):
    answers = await grown([["POST", "/users", ANN], post(2**31), post(1, title="A\u0000B")])

    # 2**31 stops at validation, before the database; a NUL character PostgreSQL refuses, main.py's rule makes it a 400
    status, body = answers[1]
    assert (status, [(e["loc"], e["type"]) for e in body["detail"]]) == (422, [(["body", "user_id"], "less_than_equal")])
    assert answers[2] == (400, {"detail": 'invalid byte sequence for encoding "UTF8": 0x00'})
    assert await rows("posts") == []


async def test_user_posts_are_that_users_posts_in_id_order_a_page_at_a_time(grown):
    answers = await grown([["POST", "/users", ANN], ["POST", "/users", BOB],
                           post(1, "A1"), post(2, "B1"), post(1, "A2"), post(1, "A3"),
                           ["GET", "/users/1/posts", None], ["GET", "/users/1/posts?limit=2", None],
                           ["GET", "/users/1/posts?after_id=3&limit=2", None]])
    titles = [(status, [p["title"] for p in page]) for status, page in answers[6:]]

    assert titles == [(200, ["A1", "A2", "A3"]), (200, ["A1", "A2"]), (200, ["A3"])]


async def test_user_posts_of_a_user_that_does_not_exist_is_404(grown):
    answers = await grown([["GET", "/users/99/posts", None]])

    assert answers == [(404, {"detail": "User not found"})]


async def test_delete_user_with_posts_is_204_and_their_posts_go_too(grown, rows):
    answers = await grown([["POST", "/users", ANN], ["POST", "/users", BOB], post(1, "A1"), post(2, "B1"), post(1, "A2"),
                           ["DELETE", "/users/1", None]])

    assert answers[-1] == (204, None)
    assert await rows("users") == [(2, "Bob", "bob@example.com")]
    assert await rows("posts") == [(2, 2, "B1", "My first post")]


async def test_without_ondelete_delete_user_with_posts_is_409_and_deletes_nothing(grown, rows):
    answers = await grown([["POST", "/users", ANN], post(1), ["DELETE", "/users/1", None]], cascade=False)

    assert answers[-1] == (409, {"detail": 'Key (id)=(1) is still referenced from table "posts".'})
    assert await rows("users") == [(1, "Ann", "ann@example.com")]
    assert await rows("posts") == [(1, 1, "Hello", "My first post")]
    assert f"`{json.dumps(answers[-1][1])}`" in DOC  # the page shows it


async def test_stale_posts_table_stops_startup_with_one_line_until_dropped_as_the_page_says(database, rows, tmp_path):
    url, own = database
    async with own.begin() as conn:  # a posts table from an earlier model, without user_id
        await conn.execute(text("CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL)"))
        await conn.execute(text("INSERT INTO posts (title) VALUES ('Old')"))
    (tmp_path / "main.py").write_text(grown_main_py(), encoding="utf-8")
    shutil.copy(HERE / "local_postgres.py", tmp_path)

    async def start():
        """python main.py in tmp_path: its exit code and stderr lines ("served" once start-up passes)."""
        result = await anyio.run_process([sys.executable, "-c", NEVER_SERVE], cwd=tmp_path,
                                         env={**os.environ, "DATABASE_URL": url}, check=False)
        return result.returncode, result.stderr.decode().strip().splitlines()

    code, lines = await start()

    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("Table posts has the columns ['id', 'title'], the model ['content', 'id', 'title', 'user_id']: migrate it")
    assert await rows("posts") == [(1, "Old")]  # left as it was

    drop_posts = re.search(r"`python local_postgres.py -c '([^']+)'`", DOC.replace("\n", " "))[1]
    async with own.begin() as conn:
        await conn.execute(text(drop_posts))
    assert await start() == (1, ["served"])
    async with own.connect() as conn:  # created anew, as the model says
        columns = await conn.scalars(text("SELECT column_name FROM information_schema.columns WHERE table_name = 'posts'"))
        assert sorted(columns) == ["content", "id", "title", "user_id"]


async def test_openapi_documents_each_answer_the_page_lists(grown):
    [(status, openapi)] = await grown([["GET", "/openapi.json", None]])
    listed = {route: set(re.findall(r"\b[1-5]\d\d\b", answers))
              for route, answers in re.findall(r"^\| `(\w+ /[^`]*)` \| (.*) \|$", DOC, re.MULTILINE)}

    assert status == 200
    assert listed == {"POST /posts": {"201", "400", "409", "413", "422", "503"},
                      "GET /users/{user_id}/posts": {"200", "404", "422", "503"}}
    for route, codes in listed.items():
        method, path = route.split(" ")
        assert set(openapi["paths"][path][method.lower()]["responses"]) == codes, route


async def test_page_truncate_and_drop_commands_work_where_users_alone_is_refused(grown, database, rows):
    await grown([["POST", "/users", ANN], post(1)])  # both tables created, a row in each
    truncate, drop = [re.search(r"-c '([^']+)'", line)[1] for line in code_blocks("bash")[0].splitlines()]
    own = database[1]
    page = DOC.replace("\n", " ")

    for alone, refused in [("TRUNCATE users", "cannot truncate a table referenced in a foreign key constraint"),
                           ("DROP TABLE users", "other objects depend on it")]:
        with pytest.raises(DBAPIError, match=refused):
            async with own.begin() as conn:
                await conn.execute(text(alone))
        assert f"`{alone}` alone" in page and refused in page  # the page says so
    async with own.begin() as conn:
        await conn.execute(text(truncate))
        await conn.execute(text("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.com')"))
    assert await rows("posts") == []
    assert await rows("users") == [(1, "Ann", "ann@example.com")]  # ids start at 1 again

    async with own.begin() as conn:
        await conn.execute(text(drop))
        assert (await conn.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).all() == []
