"""The fixtures of test_main.py, the companion to main.py, for the tests in this folder."""

import pytest
from sqlalchemy import text

from main import app, engine, get_session
from test_main import anyio_backend, client, started_app, stored  # noqa: F401


@pytest.fixture
def override_sessions(started_app):
    """Give the handlers their sessions from another session maker, as FastAPI's dependency_overrides do."""

    def override(sessions):
        async def get_other_session():
            async with sessions() as session:
                yield session

        app.dependency_overrides[get_session] = get_other_session

    yield override
    app.dependency_overrides.clear()


@pytest.fixture
async def altered(client):
    """alter(sql, undo_sql): change the (emptied) tables for one test, the models staying; undone afterwards, last change first."""
    undo = []

    async def alter(sql, undo_sql):
        async with engine.begin() as conn:
            await conn.execute(text(sql))
        undo.append(undo_sql)

    yield alter
    async with engine.begin() as conn:
        for sql in reversed(undo):
            await conn.execute(text(sql))
    # statements the pooled connections prepared for the altered tables must be prepared again
    await engine.dispose()
