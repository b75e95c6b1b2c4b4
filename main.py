"""A users API: FastAPI + async SQLAlchemy 2 + asyncpg on PostgreSQL.

Each block opens with the tutorial section it implements, in English and with
the tutorial's own heading; "not in the tutorial" marks an extra and says why.
Run it with `python main.py`, then open http://127.0.0.1:8000/docs."""

# --- 1. Install (Установка зависимостей): pip install -r requirements.txt ----
import asyncio
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import String, event, select, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# --- 2. Async engine (Создание асинхронного движка SQLAlchemy) ---------------
# The URL comes from the environment, not the code, so each machine sets its
# own, e.g. the tutorial's postgresql+asyncpg://postgres:postgres@localhost:5432/postgres
DATABASE_URL = os.environ.get("DATABASE_URL")

# Not in the tutorial: with DATABASE_URL unset, run a real PostgreSQL server
# from a pip wheel (local_postgres.py), so there is nothing else to install.
local_postgres = None
if not DATABASE_URL:
    import local_postgres
    DATABASE_URL = local_postgres.start()

engine = create_async_engine(
    DATABASE_URL,
    # connections per process: keep (worker processes x 10) below the
    # server's max_connections, 100 by default
    pool_size=int(os.environ.get("POOL_SIZE", "10")),
    max_overflow=0,
    # give up on an unreachable server after 5 s instead of asyncpg's 60
    connect_args={"timeout": 5},
)


# Not in the tutorial: two pool events, so that a PostgreSQL restart goes
# unnoticed and an outage is a 503 (see section 6), not a 500.
@event.listens_for(engine.sync_engine, "checkout")
def replace_closed_connection(dbapi_connection, connection_record, connection_proxy):
    # After a restart every pooled connection is dead. asyncpg knows which ones
    # the server closed, so ask it (no round trip) and the pool opens a new one.
    # It cannot know of a connection dropped silently on the way (a firewall,
    # a load balancer): there, use create_async_engine(..., pool_pre_ping=True).
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("closed by the server")


@event.listens_for(engine.sync_engine, "do_connect")
def connect_or_operational_error(dialect, connection_record, cargs, cparams):
    # asyncpg reports an unreachable server as a bare OSError (refused, no
    # socket, timed out): raise it as a database error instead, so the 503
    # handler does not have to catch every OSError in the app
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise dialect.loaded_dbapi.OperationalError(str(exc), exc) from exc


# --- 3. Async session (Создание асинхронной сессии) --------------------------
# expire_on_commit=False keeps attributes loaded after commit: otherwise reading
# user.name would need a hidden query, which async code cannot make (MissingGreenlet)
async_session = async_sessionmaker(engine, expire_on_commit=False)


# --- 4. The User model (Описание модели таблицы "User") ----------------------
NAME_MAX = 100
EMAIL_MAX = 254  # the longest address SMTP can deliver to
INT_MAX = 2**31 - 1  # the largest PostgreSQL integer, the type of users.id


class Base(DeclarativeBase):
    pass


class User(Base):
    # "users", not the tutorial's "user": USER is a reserved word in PostgreSQL
    __tablename__ = "users"

    # no index=True on id and email: the primary key and the unique
    # constraint (PostgreSQL names it users_email_key) come with an index each
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), unique=True)


# Not in the tutorial: pydantic schemas, what a client may send and gets back.
# No control characters in a name: PostgreSQL cannot store NUL in a string.
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")]
# EmailStr checks the address and lower-cases its domain: Ann@Example.com = Ann@example.com
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # unknown fields, such as id, are a 422

    name: Name
    email: Email


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A field may be left out of a PATCH, but not set to null: the columns are
    # NOT NULL. SkipJsonSchema keeps null out of the schema that /docs shows.
    name: Name | SkipJsonSchema[None] = None
    email: Email | SkipJsonSchema[None] = None

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


# --- 5. The FastAPI application (Создание FastAPI приложения) ----------------
# Not in the tutorial: lifespan creates the table at start-up (a real project
# uses Alembic migrations) and closes the connection pool at shutdown.
@asynccontextmanager
async def lifespan(app: FastAPI):
    await create_tables()
    yield
    await engine.dispose()
    if local_postgres:
        local_postgres.stop()  # stops the server if no other process uses it


async def create_tables() -> None:
    async with engine.begin() as conn:
        # several worker processes may start at once: this lock, held until the
        # transaction ends, lets one create the table while the others wait
        await conn.execute(text("SELECT pg_advisory_xact_lock(1)"))
        await conn.run_sync(Base.metadata.create_all)


# Not in the tutorial: any route can answer 503 (section 6), so it is
# documented once, for all of them
DB_DOWN = {503: {"model": Message, "description": "Database unavailable"}}

app = FastAPI(title="Users", lifespan=lifespan, responses=DB_DOWN)


# --- 6. Route handlers (Обработчики маршрутов) -------------------------------
# What the handlers of sections 7-9 share: the answers they document, the id
# they accept (a PostgreSQL integer, so 2**31 is a 422, not a database error)
# and two helpers. FastAPI itself answers 400 to a body it cannot decode.
NOT_FOUND = {404: {"model": Message, "description": "User not found"}}
EMAIL_TAKEN = {409: {"model": Message, "description": "Email already registered"}}
BAD_BODY = {400: {"model": Message, "description": "Body not readable as JSON: not UTF-8, or nested too deep"}}
UserId = Annotated[int, Path(ge=1, le=INT_MAX)]

# Not in the tutorial: a valid user is a few hundred bytes, so the routes
# that read a body refuse one over 64 KiB (413) before reading it.
MAX_BODY_SIZE = 64 * 1024
TOO_LARGE = {413: {"model": Message, "description": f"Request body over {MAX_BODY_SIZE // 1024} KiB"}}


async def get_user_or_404(session: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    # lock=True (SELECT ... FOR UPDATE) before a change: a concurrent delete
    # waits for us, or has already happened and we answer 404
    db_user = await session.get(User, user_id, with_for_update=lock)
    if db_user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return db_user


async def save_or_409(session: AsyncSession) -> None:
    # Not in the tutorial: 409 for a taken email. flush sends the INSERT or
    # UPDATE now and the unique constraint decides: checking for the email
    # first would let two concurrent requests both pass.
    try:
        await session.flush()
    except IntegrityError as exc:
        if getattr(exc.driver_exception, "constraint_name", None) != "users_email_key":
            raise  # another constraint broken: a bug, so a 500 with its traceback
        await session.rollback()
        raise HTTPException(status_code=409, detail="Email already registered")


# Not in the tutorial: 503, which a client may retry, for exactly these
# (the transaction is rolled back, nothing half-written stays):
# - the server cannot be reached (refused, no socket, 5 s timeout)
# - the connection broke during the request
# - PostgreSQL refuses: too many connections (53300), shutting down or
#   crashed (57P01, 57P02), starting up (57P03)
# - no pooled connection came free within 30 s (PoolTimeoutError)
REFUSED = {"53300", "57P01", "57P02", "57P03"}


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if not (isinstance(exc, OperationalError) or exc.connection_invalidated or sqlstate in REFUSED):
            raise exc  # a bug, not an outage: a 500, with its traceback in the log
    # one line in uvicorn's log says why, e.g. "too many clients already"
    logging.getLogger("uvicorn.error").warning("503 Database unavailable: %s", getattr(exc, "orig", None) or exc)
    return JSONResponse({"detail": "Database unavailable"}, status_code=503)


# --- 7. Create and update a user (Создание и обновление пользователя) --------
@app.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserPublic,
          responses=BAD_BODY | EMAIL_TAKEN | TOO_LARGE, max_body_size=MAX_BODY_SIZE)
async def create_user(user: UserCreate) -> User:
    async with async_session() as session:
        db_user = User(**user.model_dump())
        session.add(db_user)
        await save_or_409(session)
        await session.commit()
        return db_user


@app.patch("/users/{user_id}", response_model=UserPublic,
           responses=BAD_BODY | NOT_FOUND | EMAIL_TAKEN | TOO_LARGE, max_body_size=MAX_BODY_SIZE)
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


# --- 8. List users and read one (Получение списка пользователей и чтение пользователя)
@app.get("/users", response_model=list[UserPublic])
async def fetch_users(
    after_id: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[User]:
    # Not in the tutorial: one page at a time, where the tutorial returns the
    # whole table. The next page starts after the last id of this one; unlike
    # OFFSET, WHERE id > ... goes there through the primary key's index, so
    # the last page is as fast as the first.
    async with async_session() as session:
        query = select(User).where(User.id > after_id).order_by(User.id).limit(limit)
        result = await session.scalars(query)
        return list(result)


@app.get("/users/{user_id}", response_model=UserPublic, responses=NOT_FOUND)
async def read_user(user_id: UserId) -> User:
    async with async_session() as session:
        return await get_user_or_404(session, user_id)


# --- 9. Delete a user (Удаление пользователя) --------------------------------
@app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_user(user_id: UserId) -> Response:
    async with async_session() as session:
        db_user = await get_user_or_404(session, user_id, lock=True)
        await session.delete(db_user)
        await session.commit()
        return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- 10. Run the application (Запуск приложения) ----------------------------
async def check_database() -> None:
    # not in the tutorial: one clear line, not a page of traceback, when
    # PostgreSQL cannot be reached (the URL is shown without its password)
    try:
        async with engine.connect():
            pass
    except DBAPIError as exc:
        sys.exit(f"Cannot connect to PostgreSQL at {engine.url.host or 'localhost'}, "
                 f"database {engine.url.database!r}: {exc.orig}")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(check_database())
    uvicorn.run("main:app", host="127.0.0.1", port=8000, reload=True)
