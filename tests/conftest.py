"""The fixtures of test_main.py, the companion to main.py, for the tests in this folder."""

import pytest

from main import app, get_session
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
