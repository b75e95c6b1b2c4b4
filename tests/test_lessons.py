"""Where main.py departs from the tutorial, the tutorial's own way next to it, failing
the way a learner would see it. The README's departures point here."""

import asyncio

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import ResponseValidationError
from httpx import ASGITransport, AsyncClient
from sqlalchemy import Column, Integer, String, inspect, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from main import CONFLICTS, SessionDep, User, UserCreate, UserPublic, app, engine
from test_main import ANN, create

pytestmark = pytest.mark.anyio


# --- 3. expire_on_commit=False -------------------------------------------------
async def test_expire_on_commit_true_breaks_reading_the_user_after_commit(client, stored, override_sessions):
    # the session maker's default: commit expires every attribute, and FastAPI
    # reads them to build the response, where async code cannot load them
    override_sessions(async_sessionmaker(engine, expire_on_commit=True))

    with pytest.raises(ResponseValidationError, match="MissingGreenlet"):  # a 500 for the client
        await client.post("/users", json=ANN)
    assert await stored() == [(1, "Ann", "ann@example.com")]  # stored, but the answer is lost


async def test_session_is_closed_before_the_response_is_sent(client):
    # Depends(get_session, scope="function"): the connection is back in the
    # pool before the first byte of the response leaves
    ann = await create(client, ANN)
    checked_out = []

    async def watch(scope, receive, send):
        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                checked_out.append(engine.pool.checkedout())
            await send(message)

        await app(scope, receive, send_and_watch)

    async with AsyncClient(transport=ASGITransport(app=watch), base_url="http://test") as watching:
        response = await watching.get(f"/users/{ann['id']}")

    assert response.status_code == 200
    assert checked_out == [0]


# --- 4. the table's name -------------------------------------------------------
async def test_table_named_user_answers_the_current_role_not_the_table(started_app):
    class TutorialBase(DeclarativeBase):
        pass

    class TutorialUser(TutorialBase):  # section 4 as the tutorial writes it
        __tablename__ = "user"
        id = Column(Integer, primary_key=True, index=True)
        name = Column(String, index=True)
        email = Column(String, unique=True, index=True)

    async with engine.begin() as conn:
        await conn.run_sync(TutorialBase.metadata.create_all)  # SQLAlchemy quotes it: "user"
        await conn.execute(text("""INSERT INTO "user" (name, email) VALUES ('Ann', 'ann@example.com')"""))
        try:
            unquoted = (await conn.execute(text("SELECT * FROM user"))).all()
            current_role = await conn.scalar(text("SELECT current_user"))
        finally:
            await conn.run_sync(TutorialBase.metadata.drop_all)

    # USER is a reserved word: the query names the current role, not the table
    assert unquoted == [(current_role,)]


# --- 4. the unique constraint's name ---------------------------------------------
async def test_email_unique_constraint_is_named_as_the_409_message_expects(started_app):
    # unique=True, as in the tutorial: PostgreSQL names the constraint <table>_<column>_key
    async with engine.connect() as conn:
        constraints = await conn.run_sync(lambda sync_conn: inspect(sync_conn).get_unique_constraints("users"))

    assert [(c["name"], c["column_names"]) for c in constraints] == [("users_email_key", ["email"])]
    assert CONFLICTS["users_email_key"] == "Email already registered"


async def test_duplicate_on_a_differently_named_unique_constraint_is_still_a_409_in_postgresqls_words(client, stored):
    # a naming convention, or a constraint of the learner's own: no name to look up, the same rule
    await create(client, ANN)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE users RENAME CONSTRAINT users_email_key TO uq_users_email"))
    try:
        response = await client.post("/users", json={"name": "Other Ann", "email": ANN["email"]})
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE users RENAME CONSTRAINT uq_users_email TO users_email_key"))

    assert response.status_code == 409
    assert response.json() == {"detail": "Key (email)=(ann@example.com) already exists."}
    assert await stored() == [(1, "Ann", "ann@example.com")]


async def test_users_table_has_one_index_per_lookup(started_app):
    # the primary key and the unique constraint bring their own index; the
    # tutorial's index=True on id and email would add a second, useless one
    async with engine.connect() as conn:
        indexes = (await conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'users'"))).scalars().all()

    assert sorted(indexes) == ["ix_users_name", "users_email_key", "users_pkey"]


# --- 7. the database decides on duplicates ----------------------------------------
def app_checking_the_email_first():
    """The tutorial's create_user, made careful the obvious way: look for the email, then insert."""
    both_checked = asyncio.Barrier(2)
    tutorial_app = FastAPI()

    @tutorial_app.post("/users", status_code=201, response_model=UserPublic)
    async def create_user(user: UserCreate, session: SessionDep) -> User:
        if await session.scalar(select(User).where(User.email == user.email)) is not None:
            raise HTTPException(status_code=409, detail="Email already registered")
        await both_checked.wait()  # two requests at the same moment: each found no such email
        db_user = User(**user.model_dump())
        session.add(db_user)
        await session.commit()
        return db_user

    return tutorial_app


async def test_checking_for_the_email_first_lets_two_concurrent_requests_both_pass(client, stored):
    transport = ASGITransport(app=app_checking_the_email_first(), raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as tutorial:
        responses = await asyncio.gather(tutorial.post("/users", json=ANN), tutorial.post("/users", json=ANN))

    # both passed the check; the unique constraint refused the second INSERT,
    # which that handler did not expect: a 500, not a 409
    assert sorted(r.status_code for r in responses) == [201, 500]
    # which INSERT came first, and took id 1, is up to PostgreSQL: the row is the 201's
    [created] = [r.json() for r in responses if r.status_code == 201]
    assert await stored() == [(created["id"], "Ann", "ann@example.com")]


# --- 8. pages, not the whole table -------------------------------------------------
async def test_whole_table_list_sends_every_row_where_a_page_sends_50(client):
    tutorial_app = FastAPI()

    @tutorial_app.get("/users", response_model=list[UserPublic])
    async def fetch_users(session: SessionDep) -> list[User]:  # section 8 as the tutorial's code usually has it
        return list(await session.scalars(select(User)))

    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO users (name, email) SELECT 'User ' || g, 'user' || g || '@example.com' FROM generate_series(1, 10000) g"
        ))
    async with AsyncClient(transport=ASGITransport(app=tutorial_app), base_url="http://test") as tutorial:
        whole_table = await tutorial.get("/users")
    page = await client.get("/users")

    # every request reads, converts and sends all 10,000 rows, about 600 kB
    assert len(whole_table.json()) == 10_000
    assert len(page.json()) == 50
    assert len(whole_table.content) > 100 * len(page.content)
