"""A users API: FastAPI + async SQLAlchemy 2 + asyncpg on PostgreSQL. Each block
names the tutorial section it implements; "not in the tutorial" marks an extra.
Run it with `python main.py`, then open http://127.0.0.1:8000/docs."""

# --- 1. Install (Установка зависимостей): pip install -r requirements.txt ----
import asyncio
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import MISSING, BaseModel, ConfigDict, EmailStr, Field, StringConstraints
from sqlalchemy import URL, String, UniqueConstraint, event, inspect, make_url, select, text
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, IntegrityError, OperationalError
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


# Not in the tutorial: take the URL as a hosting provider prints it.
def asyncpg_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except ArgumentError:
        url = None
    if url is None or url.get_backend_name() not in ("postgres", "postgresql"):
        sys.exit("DATABASE_URL must be a PostgreSQL URL such as postgresql://user:password@host:5432/database")
    # asyncpg cannot do channel binding: stop rather than connect with less
    # protection than the URL asks for ("prefer" and "disable" ask for none)
    if url.query.get("channel_binding") == "require":
        sys.exit("DATABASE_URL: remove channel_binding=require, asyncpg cannot do it (sslmode=verify-full guards too)")
    # postgres:// and postgresql:// mean asyncpg here (SQLAlchemy would load psycopg),
    # and libpq's sslmode is asyncpg's ssl, with the same values and meaning
    ssl = {"ssl": url.query["sslmode"]} if "sslmode" in url.query else {}
    url = url.difference_update_query(["sslmode", "channel_binding"]).update_query_dict(ssl)
    return url.set(drivername="postgresql+asyncpg")


# Not in the tutorial: nothing waits forever. Each wait on the database ends
# after DB_TIMEOUT seconds with a 503 (section 6): 5 s, so that a request that
# meets a frozen server ends within about 10 s (2 x DB_TIMEOUT + 1 measured).
DB_TIMEOUT = float(os.environ.get("DB_TIMEOUT", "5"))
engine = create_async_engine(
    asyncpg_url(DATABASE_URL),
    # connections per process: keep (worker processes x 10) below the
    # server's max_connections, 100 by default
    pool_size=int(os.environ.get("POOL_SIZE", "10")), max_overflow=0,
    pool_timeout=DB_TIMEOUT,  # waiting for a free pooled connection
    connect_args={
        "timeout": DB_TIMEOUT,  # opening a connection
        # the server cancels a statement that runs longer, and a wait for a row
        # lock after half of that, with its own error code (sent once per
        # connection, not with every request)
        "server_settings": {"statement_timeout": f"{DB_TIMEOUT}s", "lock_timeout": f"{DB_TIMEOUT / 2}s"},
        # a server that stops answering (frozen, network lost) cancels nothing:
        # give up here too, a second later than the server would
        "command_timeout": DB_TIMEOUT + 1,
    },
)


# Not in the tutorial: three engine events (one of its pool, two of its dialect),
# so that a PostgreSQL restart goes unnoticed and an outage is a 503 (section 6).
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
    # socket, timed out, certificate refused): raise it as a database error
    # instead, so the 503 handler does not catch every OSError in the app
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise dialect.loaded_dbapi.OperationalError(str(exc), exc) from exc


@event.listens_for(engine.sync_engine, "handle_error")
def no_answer_drops_the_connection(context):
    # A statement got no answer within command_timeout: that connection may
    # never answer again, so close it now (rather than wait for a ROLLBACK or
    # a polite goodbye on it) and report a database error, a 503 (section 6).
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True
        context.connection.connection.driver_connection.terminate()
        raise OperationalError(context.statement, context.parameters, context.original_exception)


# --- 3. Async session (Создание асинхронной сессии) --------------------------
# expire_on_commit=False keeps the attributes loaded at commit: FastAPI reads
# them after the handler returns, and an expired one would need a query that
# async code cannot make there (MissingGreenlet)
async_session = async_sessionmaker(engine, expire_on_commit=False)


# Not in the tutorial: each handler gets its session as a dependency, as in
# FastAPI's own SQL tutorial. scope="function" closes it, and returns the
# connection to the pool, as soon as the handler's response is built.
async def get_session():
    async with async_session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


# --- 4. The User model (Описание модели таблицы "User") ----------------------
NAME_MAX = 100
EMAIL_MAX = 254  # the longest address SMTP can deliver to
INT_MAX = 2**31 - 1  # the largest PostgreSQL integer, the type of users.id
EMAIL_UNIQUE = "users_email_key"  # the unique constraint's name; save_or_409 looks for it


class Base(DeclarativeBase):
    pass


class User(Base):
    # "users", not the tutorial's "user": USER is a reserved word in PostgreSQL
    __tablename__ = "users"
    # no index=True on id and email: the primary key and the unique
    # constraint come with an index each
    __table_args__ = (UniqueConstraint("email", name=EMAIL_UNIQUE),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))


# Not in the tutorial: pydantic schemas, what a client may send and gets back.
# A name is trimmed of surrounding spaces and must not be blank. What remains is
# what a reader sees: no control, format (zero-width, right-to-left override),
# private-use or unassigned characters (Unicode's category C), no line breaks.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX,
                                        pattern=r"^[^\p{C}\p{Zl}\p{Zp}]+$")]
# EmailStr checks the address and lower-cases its domain: Ann@Example.com = Ann@example.com
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX)]


class UserCreate(BaseModel):
    # unknown fields, such as id, are a 422; the example is what /docs starts from
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Ann", "email": "ann@example.com"}]})

    name: Name
    email: Email


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Anna"}]})

    # A field may be left out of a PATCH (pydantic's MISSING), but not sent as
    # null: the columns are NOT NULL
    name: Name | MISSING = MISSING
    email: Email | MISSING = MISSING


class UserPublic(BaseModel):
    id: int
    name: str
    email: str


class Message(BaseModel):
    detail: str


# Not in the tutorial: an error response for the OpenAPI schema, with the
# detail it really has as the example that /docs shows
def answer(description: str, detail: str, **more) -> dict:
    return {"model": Message, "description": description, "content": {"application/json": {"example": {"detail": detail}}}, **more}


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
    # one line, not a traceback, when the database cannot be used
    try:
        async with engine.begin() as conn:
            # several worker processes may start at once: this lock, held until
            # the transaction ends, lets one create the table while the others wait
            await conn.execute(text("SELECT pg_advisory_xact_lock(1)"))
            await conn.run_sync(Base.metadata.create_all)
            columns = await conn.run_sync(lambda sync_conn: inspect(sync_conn).get_columns("users"))
    except DBAPIError as exc:
        sys.exit(f"Cannot use the database at {engine.url}: {exc.orig}")
    # create_all creates a missing table, it never changes one that exists:
    # after a change to the model, say so here, not with a 500 on every request
    # (a column the model lacks is fine, unless an INSERT must give it a value)
    model = set(User.__table__.columns.keys())
    table = {c["name"] for c in columns if c["name"] in model or not (c["nullable"] or c["default"] or c.get("identity"))}
    if table != model:
        sys.exit(f"Table users has the columns {sorted(table)}, the model {sorted(model)}: start from an empty database "
                 "(the zero-set-up one: stop the app, delete .pgdata/) or write a migration (docs/production.md)")


# Not in the tutorial: any route can answer 503 (section 6), so it is
# documented once, for all of them; Retry-After says when to try again
DB_DOWN = {503: answer("Retry later", "Database unavailable", headers={"Retry-After": {"schema": {"type": "integer"}}})}

app = FastAPI(title="Users", lifespan=lifespan, responses=DB_DOWN)


# --- 6. Route handlers (Обработчики маршрутов) -------------------------------
# What the handlers of sections 7-9 share: the answers they document, the id
# they accept (a PostgreSQL integer, so 2**31 is a 422, not a database error)
# and two helpers. FastAPI itself answers 400 to a body it cannot decode.
NOT_FOUND = {404: answer("User not found", "User not found")}
EMAIL_TAKEN = {409: answer("Email already registered", "Email already registered")}
BAD_BODY = {400: answer("Body not UTF-8, or (before Python 3.14) JSON nested too deep", "There was an error parsing the body")}
UserId = Annotated[int, Path(ge=1, le=INT_MAX)]

# Not in the tutorial: a valid user is a few hundred bytes, so the routes
# that read a body refuse one over 64 KiB (413): before reading it when the
# Content-Length header says so (Starlette answers in plain text), else as
# soon as the body grows past the limit (JSON).
MAX_BODY_SIZE = 64 * 1024
TOO_LARGE = {413: answer(f"Request body over {MAX_BODY_SIZE // 1024} KiB", "Content Too Large")}
TOO_LARGE[413]["content"]["text/plain"] = {"schema": {"type": "string"}, "example": "Content Too Large"}


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
        if getattr(exc.driver_exception, "constraint_name", None) != EMAIL_UNIQUE:
            raise  # another constraint broken: a bug, so a 500 with its traceback
        raise HTTPException(status_code=409, detail="Email already registered")


# Not in the tutorial: FastAPI's own 422, without the input it echoes back: a
# body nested thousands of levels deep would overflow FastAPI's JSON encoder (a 500)
@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"type": error["type"], "loc": error["loc"], "msg": error["msg"]} for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


# Not in the tutorial: what a database error answers. By SQLSTATE (PostgreSQL's
# error code; a class is its first two characters):
# - 503 "retry later": the server cannot be reached or stopped answering
#   (DB_TIMEOUT), the connection broke, no pooled connection came free;
#   class 08 connection lost, 40 serialization failure or deadlock, 53 too many
#   connections or out of resources, 57 shut down, starting up or statement
#   timeout; 55P03 lock timeout; 25006 read-only (a failover left us on a standby)
# - 409: 23505 on the email's unique constraint (save_or_409)
# - 500, with its traceback in the log: anything else is a bug
RETRY_LATER = ("08", "40", "53", "57", "55P03", "25006")


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if not (sqlstate.startswith(RETRY_LATER) or isinstance(exc, OperationalError) or exc.connection_invalidated):
            raise exc  # a bug, not an outage: a 500, with its traceback in the log
    # one line in uvicorn's log says why, e.g. "too many clients already"
    logging.getLogger("uvicorn.error").warning("503 Database unavailable: %s", getattr(exc, "orig", None) or exc)
    return JSONResponse({"detail": "Database unavailable"}, status_code=503, headers={"Retry-After": "5"})


# --- 7. Create and update a user (Создание и обновление пользователя) --------
@app.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserPublic,
          responses=BAD_BODY | EMAIL_TAKEN | TOO_LARGE, max_body_size=MAX_BODY_SIZE)
async def create_user(user: UserCreate, session: SessionDep) -> User:
    db_user = User(**user.model_dump())
    session.add(db_user)
    await save_or_409(session)
    await session.commit()
    return db_user


@app.patch("/users/{user_id}", response_model=UserPublic,
           responses=BAD_BODY | NOT_FOUND | EMAIL_TAKEN | TOO_LARGE, max_body_size=MAX_BODY_SIZE)
async def update_user(user_id: UserId, user: UserUpdate, session: SessionDep) -> User:
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
async def fetch_users(session: SessionDep, after_id: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
                      limit: Annotated[int, Query(ge=1, le=100)] = 50) -> list[User]:
    # Not in the tutorial: one page at a time, where the tutorial returns the
    # whole table. The next page starts after the last id of this one; unlike
    # OFFSET, WHERE id > ... goes there through the primary key's index, so
    # the last page is as fast as the first.
    return list(await session.scalars(select(User).where(User.id > after_id).order_by(User.id).limit(limit)))


@app.get("/users/{user_id}", response_model=UserPublic, responses=NOT_FOUND)
async def read_user(user_id: UserId, session: SessionDep) -> User:
    return await get_user_or_404(session, user_id)


# --- 9. Delete a user (Удаление пользователя) --------------------------------
@app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_user(user_id: UserId, session: SessionDep) -> None:
    db_user = await get_user_or_404(session, user_id, lock=True)
    await session.delete(db_user)
    await session.commit()


# --- 10. Run the application (Запуск приложения) ----------------------------
async def check_database() -> None:
    # not in the tutorial: before the server starts, the table is there and
    # matches the model, or one line says why not (see create_tables)
    await create_tables()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(check_database())
    uvicorn.run("main:app", host="127.0.0.1", port=8000, reload=True)
