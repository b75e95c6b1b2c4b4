"""A users API beside the tutorial: each block names its section; the blocks after the handlers turn a failing
database into a prompt 503 and check the table. Run `python main.py`, then open http://127.0.0.1:8000/docs."""

# --- 1. Install (Установка зависимостей): pip install -r requirements.txt ----
import asyncio
import logging
import os
import sys
import unicodedata
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import MISSING, AfterValidator, BaseModel, ConfigDict, EmailStr, StringConstraints
from sqlalchemy import String, UniqueConstraint, event, inspect, select, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError, TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# --- 2. Async engine (Создание асинхронного движка SQLAlchemy) ---------------
# from the environment, e.g. the tutorial's postgresql+asyncpg://postgres:postgres@localhost:5432/postgres
DATABASE_URL = os.environ.get("DATABASE_URL")
local_postgres = None  # not in the tutorial: without DATABASE_URL, this module runs a PostgreSQL from a pip wheel
if not DATABASE_URL:
    try:
        import local_postgres
    except ModuleNotFoundError as exc:
        sys.exit(f"Set DATABASE_URL, e.g. postgresql://user:password@localhost:5432/dbname ({exc})")
    DATABASE_URL = local_postgres.start()
DB_TIMEOUT = float(os.environ.get("DB_TIMEOUT", "5"))  # seconds; see "When the database fails"

engine = create_async_engine(
    # asyncpg reads the URL itself (dsn), with the libpq parameters it knows (sslmode,
    # sslrootcert, ...); it knows postgresql://, not postgresql+asyncpg://
    "postgresql+asyncpg://",
    connect_args={
        "dsn": DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://", 1),
        "timeout": DB_TIMEOUT, "command_timeout": DB_TIMEOUT + 1,  # to connect, to wait for each answer
        # the server cancels a statement that runs longer, and a wait for a row lock after half that
        "server_settings": {"statement_timeout": f"{DB_TIMEOUT}s", "lock_timeout": f"{DB_TIMEOUT / 2}s"},
    },
    # connections per process: keep (worker processes x POOL_SIZE) under the server's max_connections
    pool_size=int(os.environ.get("POOL_SIZE", "10")), max_overflow=0, pool_timeout=DB_TIMEOUT,
    echo=os.environ.get("SQL_ECHO") == "1",  # SQL_ECHO=1 python main.py prints every statement
)

# --- 3. Async session (Создание асинхронной сессии) --------------------------
# expire_on_commit=False keeps the attributes loaded at commit: FastAPI reads
# them after the handler returns, where async code cannot load an expired one
async_session = async_sessionmaker(engine, expire_on_commit=False)


# Not in the tutorial: the session as a dependency, as in FastAPI's SQL tutorial;
# scope="function" closes it once the response is built, before it is sent (a
# yield dependency of yours that takes SessionDep needs scope="function" too)
async def get_session():
    async with async_session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

# --- 4. The User model (Описание модели таблицы "User") ----------------------
EMAIL_UNIQUE = "users_email_key"  # the unique constraint's name; save_or_409 looks for it


class Base(DeclarativeBase):
    pass


class User(Base):
    # "users", not the tutorial's "user": USER is a reserved word (in SQL of yours, FROM user is the role)
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("email", name=EMAIL_UNIQUE),)

    id: Mapped[int] = mapped_column(primary_key=True)  # no index=True: a primary key has its index
    name: Mapped[str] = mapped_column(String(100), index=True)
    email: Mapped[str] = mapped_column(String(254))  # EmailStr's longest; the unique constraint has an index


# Not in the tutorial: pydantic schemas, what a client may send and gets back.
def visible(name: str) -> str:
    # no control or invisible characters (zero-width space, right-to-left override), line breaks,
    # private-use or unassigned ones; but the joiners of Persian or Hindi words and emoji, and the soft hyphen
    hidden = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp")]
    if set(hidden) - {"\u200c", "\u200d", "\u00ad"}:
        raise ValueError("must not contain control or invisible characters")
    return name


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(visible)]


class UserCreate(BaseModel):
    # unknown fields, such as id, are a 422; the example is what /docs starts from
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Ann", "email": "ann@example.com"}]})

    name: Name  # trimmed of surrounding spaces, not blank, visible
    email: EmailStr  # checks the address and lower-cases its domain (not the part before @)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Anna"}]})

    # a field may be left out (MISSING), not sent as null: the columns are NOT NULL
    name: Name | MISSING = MISSING
    email: EmailStr | MISSING = MISSING


class UserPublic(BaseModel):  # what a client gets back
    id: int
    name: str
    email: str


class Message(BaseModel):  # the body of the errors the routes document for /docs
    detail: str


NOT_FOUND = {404: {"model": Message, "description": "User not found"}}
EMAIL_TAKEN = {409: {"model": Message, "description": "Email already registered"}}
MAX_BODY_SIZE = 64 * 1024  # a user is a few hundred bytes; 413 is plain text if Content-Length says so
BAD_BODY = {400: {"model": Message, "description": "Body not UTF-8, or (before Python 3.14) JSON nested too deep"},
            413: {"model": Message, "description": "Content Too Large: a body over 64 KiB"}}
DB_DOWN = {503: {"model": Message, "description": "Database unavailable", "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}


# --- 5. The FastAPI application (Создание FastAPI приложения) ----------------
@asynccontextmanager
async def lifespan(app: FastAPI):
    # not in the tutorial: create the table (create_tables, below; a real project migrates it)
    await create_tables()
    yield
    await engine.dispose()
    if local_postgres:  # the zero-set-up server: stopped if no other process uses it
        local_postgres.stop()


app = FastAPI(title="Users", lifespan=lifespan, responses=DB_DOWN)

# --- 6. Route handlers (Обработчики маршрутов) -------------------------------
# What the handlers of sections 7-9 share: the id they accept (a PostgreSQL
# integer, so 2**31 is a 422, not a database error) and two helpers.
INT_MAX = 2**31 - 1
UserId = Annotated[int, Path(ge=1, le=INT_MAX)]


async def get_user_or_404(session: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    # lock=True (SELECT ... FOR UPDATE) before a change: a concurrent delete waits for us, or was first (404)
    db_user = await session.get(User, user_id, with_for_update=lock)
    if db_user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return db_user


async def save_or_409(session: AsyncSession) -> None:
    # Not in the tutorial: flush sends the INSERT or UPDATE now, and the unique constraint
    # decides; a SELECT for the email first would let two concurrent requests both pass
    try:
        await session.flush()
    except IntegrityError as exc:
        if getattr(exc.driver_exception, "constraint_name", None) != EMAIL_UNIQUE:
            raise  # another constraint broken: a bug, so a 500 with its traceback
        raise HTTPException(status_code=409, detail="Email already registered")


# --- 7. Create and update a user (Создание и обновление пользователя) --------
@app.post("/users", status_code=201, response_model=UserPublic, responses=BAD_BODY | EMAIL_TAKEN, max_body_size=MAX_BODY_SIZE)
async def create_user(user: UserCreate, session: SessionDep) -> User:
    db_user = User(**user.model_dump())
    session.add(db_user)
    await save_or_409(session)
    await session.commit()
    return db_user


@app.patch("/users/{user_id}", response_model=UserPublic, responses=BAD_BODY | NOT_FOUND | EMAIL_TAKEN, max_body_size=MAX_BODY_SIZE)
async def update_user(user_id: UserId, user: UserUpdate, session: SessionDep) -> User:
    db_user = await get_user_or_404(session, user_id, lock=True)
    for field, value in user.model_dump().items():  # only the fields sent: MISSING ones are left out
        setattr(db_user, field, value)
    await save_or_409(session)
    # the tutorial's refresh, before commit: our lock still keeps a concurrent delete out
    await session.refresh(db_user)
    await session.commit()
    return db_user


# --- 8. List users and read one (Получение списка пользователей и чтение пользователя)
@app.get("/users", response_model=list[UserPublic])
async def fetch_users(session: SessionDep, after_id: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
                      limit: Annotated[int, Query(ge=1, le=100)] = 50) -> list[User]:
    # Not in the tutorial: a page, not the whole table. The next one starts after this one's
    # last id: WHERE id > ... goes there through the index, as fast as to the first page
    return list(await session.scalars(select(User).where(User.id > after_id).order_by(User.id).limit(limit)))


@app.get("/users/{user_id}", response_model=UserPublic, responses=NOT_FOUND)
async def read_user(user_id: UserId, session: SessionDep) -> User:
    return await get_user_or_404(session, user_id)


# --- 9. Delete a user (Удаление пользователя) --------------------------------
@app.delete("/users/{user_id}", status_code=204, responses=NOT_FOUND)
async def delete_user(user_id: UserId, session: SessionDep) -> None:
    db_user = await get_user_or_404(session, user_id, lock=True)
    await session.delete(db_user)
    await session.commit()


# --- Not in the tutorial: when the database fails ----------------------------
# Each wait on the database is bounded (the engine's arguments), and a database that is down,
# frozen, overloaded or read-only gets a 503 with Retry-After, not a 500 (on a frozen server
# every request ended within 2 x DB_TIMEOUT + 1 s: tests/test_outages.py).
@event.listens_for(engine.sync_engine, "checkout")
def replace_closed_connection(dbapi_connection, connection_record, connection_proxy):
    # after a restart the pooled connections are closed: asyncpg knows it without a round trip
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("closed by the server")


@event.listens_for(engine.sync_engine, "do_connect")
def connect_or_operational_error(dialect, connection_record, cargs, cparams):
    # asyncpg reports a server it cannot reach (refused, timed out, TLS refused)
    # as an OSError: make it a database error, for the 503, not every OSError
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise dialect.loaded_dbapi.OperationalError(str(exc)) from exc


@event.listens_for(engine.sync_engine, "handle_error")
def no_answer_closes_the_connection(context):
    # no answer within command_timeout (a frozen server, a lost network): close the connection
    # now (a polite close would wait 2 s more), and raise a database error, for the 503
    if isinstance(context.original_exception, TimeoutError):
        context.connection.connection.driver_connection.terminate()
        raise OperationalError(context.statement, context.parameters, context.original_exception)


def reason(exc: BaseException) -> str:
    # the first line of the error at the root, e.g. "ConnectionRefusedError: [Errno 111] ..."
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)  # no pooled connection came free in time
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # an outage: unreachable or no answer (OperationalError, from the events above), a broken
    # connection the pool dropped, or a SQLSTATE (PostgreSQL's error code) class or code that
    # means "retry later": 40 serialization failure or deadlock, 53 too many connections or out
    # of resources, 57 shut down, starting up or statement timeout, 55P03 lock timeout, 25006
    # read-only (a failover left us on a standby)
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if isinstance(exc, DBAPIError) and not (isinstance(exc, OperationalError) or exc.connection_invalidated
                                            or sqlstate.startswith(("40", "53", "57", "55P03", "25006"))):
        raise exc  # a bug, not an outage: a 500, with its traceback in the log
    logging.getLogger("uvicorn.error").warning("503 Database unavailable: %s", reason(exc))
    return JSONResponse({"detail": "Database unavailable"}, status_code=503, headers={"Retry-After": "5"})


# --- Not in the tutorial: the table at start-up, and bad requests ------------
async def create_tables() -> None:
    # one line, not a traceback, when the database cannot be used
    try:
        async with engine.begin() as conn:
            # several workers may start at once: one creates the table, the others wait for this lock
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('main.py: create table users'))"))
            await conn.run_sync(Base.metadata.create_all)
            columns = await conn.run_sync(lambda sync_conn: inspect(sync_conn).get_columns("users"))
        # python main.py checks in an event loop of its own (asyncio.run), then serves in another
        await engine.dispose()
    except DBAPIError as exc:
        sys.exit(f"Cannot use the database: {reason(exc)}")
    # create_all never changes a table that exists: after a change to the model, say so here, not
    # with 500s. Only column names are compared (and a NOT NULL column the model would not fill).
    model = set(User.__table__.columns.keys())
    table = {c["name"] for c in columns if c["name"] in model or not (c["nullable"] or c["default"] or c.get("identity"))}
    if table != model:
        sys.exit(f"Table users has the columns {sorted(c['name'] for c in columns)}, the model {sorted(model)}: "
                 "migrate it (Alembic), or drop it, rows and all, to start afresh")


# FastAPI's own 422 echoes the input back, and a body nested thousands of levels deep would
# overflow its JSON encoder (a 500): this one leaves the input out
@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": [{key: error[key] for key in ("type", "loc", "msg")} for error in exc.errors()]}, status_code=422)


# --- 10. Run the application (Запуск приложения) ----------------------------
if __name__ == "__main__":
    # not in the tutorial: check the table before the server starts, so that a problem is one line
    asyncio.run(create_tables())
    uvicorn.run("main:app", host="127.0.0.1", port=8000, reload=True)
