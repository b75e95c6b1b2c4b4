"""The SQL each handler sends to PostgreSQL, in order: what SQL_ECHO=1 python main.py
prints, and where flush, refresh, FOR UPDATE and the transaction become concrete."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import event

from main import engine
from test_main import ANN, create

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent


@pytest.fixture
def sent(client):
    """The statements the app sends from now on, shortened to their first words (BEGIN, COMMIT and ROLLBACK included)."""
    statements = []

    def cursor_execute(conn, cursor, statement, parameters, context, executemany):
        # "SELECT users.id, users.name, users.email FROM users WHERE ..." -> "SELECT ... FROM users WHERE users.id = $1::INTEGER"
        statements.append(re.sub(r"^SELECT .*? FROM", "SELECT ... FROM", " ".join(statement.split())))

    listeners = {"before_cursor_execute": cursor_execute, "begin": lambda conn: statements.append("BEGIN"),
                 "commit": lambda conn: statements.append("COMMIT"), "rollback": lambda conn: statements.append("ROLLBACK")}
    for name, listener in listeners.items():
        event.listen(engine.sync_engine, name, listener)
    yield statements
    for name, listener in listeners.items():
        event.remove(engine.sync_engine, name, listener)


async def test_create_user_sends_one_insert_and_commits(client, sent):
    await client.post("/users", json=ANN)

    assert sent == ["BEGIN", "INSERT INTO users (name, email) VALUES ($1::VARCHAR, $2::VARCHAR) RETURNING users.id", "COMMIT"]


async def test_create_user_duplicate_email_rolls_back(client, sent):
    await create(client, ANN)
    sent.clear()

    await client.post("/users", json=ANN)

    assert sent == ["BEGIN", "INSERT INTO users (name, email) VALUES ($1::VARCHAR, $2::VARCHAR) RETURNING users.id", "ROLLBACK"]


async def test_update_user_locks_the_row_updates_rereads_and_commits(client, sent):
    ann = await create(client, ANN)
    sent.clear()

    await client.patch(f"/users/{ann['id']}", json={"name": "Anna"})

    assert sent == [
        "BEGIN",
        "SELECT ... FROM users WHERE users.id = $1::INTEGER FOR UPDATE",  # get_user_or_404(lock=True)
        "UPDATE users SET name=$1::VARCHAR WHERE users.id = $2::INTEGER",  # flush in save_or_409
        "SELECT ... FROM users WHERE users.id = $1::INTEGER",  # refresh
        "COMMIT",
    ]


async def test_fetch_users_sends_one_keyset_query(client, sent):
    await client.get("/users", params={"after_id": 5, "limit": 10})

    assert sent == ["BEGIN", "SELECT ... FROM users WHERE users.id > $1::INTEGER ORDER BY users.id LIMIT $2::INTEGER", "ROLLBACK"]


async def test_read_user_sends_one_select(client, sent):
    await client.get("/users/1")

    # a read commits nothing: closing the session rolls its transaction back
    assert sent == ["BEGIN", "SELECT ... FROM users WHERE users.id = $1::INTEGER", "ROLLBACK"]


async def test_delete_user_locks_the_row_deletes_and_commits(client, sent):
    ann = await create(client, ANN)
    sent.clear()

    await client.delete(f"/users/{ann['id']}")

    assert sent == [
        "BEGIN",
        "SELECT ... FROM users WHERE users.id = $1::INTEGER FOR UPDATE",
        "DELETE FROM users WHERE users.id = $1::INTEGER",
        "COMMIT",
    ]


def test_sql_echo_1_turns_on_the_statement_log():
    # SQL_ECHO=1 python main.py: SQLAlchemy's echo, every statement in the app's output
    check = "import main; print(main.engine.echo)"
    env = {**os.environ, "SQL_ECHO": "1"}
    result = subprocess.run([sys.executable, "-c", check], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)

    assert result.stdout.split() == ["True"], result.stderr
    assert engine.echo is False  # unset here
