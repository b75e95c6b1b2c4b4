"""FastAPI's own testing idiom, `with TestClient(app) as client:`, entered again and
again in one process (a client per test), on DATABASE_URL and on the zero-set-up
server: each time the lifespan runs again, and nothing is left running afterwards.

Each run is a process of its own, as a learner's pytest would be: TestClient runs
the app in an event loop of its own, which this test process's loop must not share."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_local_postgres import project_copy  # noqa: F401

HERE = Path(__file__).resolve().parent.parent

# three clients one after the other, each its own lifespan: start-up, requests, shutdown
THREE_CLIENTS = """
import json
from fastapi.testclient import TestClient
import main

answers = []
for n in range(3):
    with TestClient(main.app) as client:
        created = client.post("/users", json={"name": f"User {n}", "email": f"user{n}@example.com"})
        listed = client.get("/users")
        answers.append([created.status_code, listed.status_code, len(listed.json())])
print(json.dumps(answers))
"""


def run_three_clients(cwd, env):
    """Run THREE_CLIENTS with main.py in cwd; return what each client got: [POST status, GET status, users listed]."""
    done = subprocess.run([sys.executable, "-c", THREE_CLIENTS], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.anyio
async def test_testclient_entered_three_times_on_database_url(client, stored):
    answers = run_three_clients(HERE, {**os.environ})

    assert answers == [[201, 200, 1], [201, 200, 2], [201, 200, 3]]
    assert [name for _, name, _ in await stored()] == ["User 0", "User 1", "User 2"]


def test_testclient_entered_three_times_on_the_zero_set_up_server_and_nothing_left_running(project_copy):
    # project_copy: main.py and local_postgres.py in a folder of their own (and its server stopped afterwards)
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "TEST_DATABASE_URL")}

    answers = run_three_clients(project_copy, env)

    # the server was stopped after each client and started again by the next one's lifespan
    assert answers == [[201, 200, 1], [201, 200, 2], [201, 200, 3]]
    assert not (project_copy / ".pgdata" / "postmaster.pid").exists()
