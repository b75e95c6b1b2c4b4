"""A users API beside the tutorial: each block names its section; the blocks after the handlers turn what the
database refuses into a 4xx, its failures into a prompt 503. Run `python main.py`, open http://127.0.0.1:8000/docs."""

# --- 1. Install (Установка зависимостей): pip install -r requirements.txt ----
import asyncio
import logging
import os
import re
import sys
import unicodedata
from contextlib import asynccontextmanager
from inspect import signature
from typing import Annotated
from urllib.parse import urlencode

import asyncpg
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, StringConstraints
from sqlalchemy import String, event, inspect, make_url, select, text
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, OperationalError, TimeoutError as PoolTimeoutError
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
try:  # not in the tutorial: a URL with a typo (a port that is not a number) is one line, not a traceback
    url = make_url(DATABASE_URL)
except (ArgumentError, ValueError) as exc:
    sys.exit(f"DATABASE_URL: {exc}")

engine = create_async_engine(
    url.set(drivername="postgresql+asyncpg"),  # a provider's postgresql:// or postgres:// URL too, through asyncpg
    # to connect, to wait for each answer; the server cancels a statement that runs longer, a wait for any lock after half that
    connect_args={"timeout": DB_TIMEOUT, "command_timeout": DB_TIMEOUT + 1,
                  "server_settings": {"statement_timeout": f"{DB_TIMEOUT}s", "lock_timeout": f"{DB_TIMEOUT / 2}s"}},
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
class Base(DeclarativeBase):
    pass


class User(Base):
    # "users", not the tutorial's "user": USER is a reserved word (in SQL of yours, FROM user is the role)
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)  # no index=True: a primary key has its index
    name: Mapped[str] = mapped_column(String(100), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # EmailStr's longest; unique brings its index


# Not in the tutorial: pydantic schemas, what a client may send and gets back.
FLAG = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")  # a region's flag: black flag, tag letters, end tag
JOINERS = "\u200c\u200d\u00ad"  # the joiners of Persian or Hindi words and of emoji, and the soft hyphen
NOTHING_TO_SEE = JOINERS + "\u115f\u1160\u3164\uffa0\u2800"  # with the Hangul fillers and the Braille blank


def visible(name: str) -> str:
    # no control or format characters (zero-width space, right-to-left override), line breaks or private-use ones
    # but joiners and a flag's tags; and something to see. The same answer on every Python: characters its Unicode
    # does not know yet pass, and U+13439-1343F, format characters since Unicode 15 (Python 3.12), never do
    shown = FLAG.sub("\U0001f3f4", name)
    hidden = [c for c in shown if c not in JOINERS and (unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")
                                                        or "\U00013439" <= c <= "\U0001343f")]
    if hidden or all(c.isspace() or c in NOTHING_TO_SEE for c in shown):
        raise ValueError("must be visible: no control or invisible characters")
    return name


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(visible)]


class UserCreate(BaseModel):
    # unknown fields, such as id, are a 422; the example is what /docs starts from
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Ann", "email": "ann@example.com"}]})

    name: Name  # trimmed of surrounding spaces, not blank, visible
    email: EmailStr  # checks the address and lower-cases its domain (not the part before @)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Anna"}]})

    # a field may be left out (None then stands in, never validated), not sent as null: the columns are NOT NULL
    name: Name = None
    email: EmailStr = None


class UserPublic(BaseModel):  # what a client gets back
    id: int
    name: str
    email: str


class Message(BaseModel):  # the body of the errors the routes document for /docs
    detail: str


NOT_FOUND = {404: {"model": Message, "description": "User not found"}}
EMAIL_TAKEN = {409: {"model": Message, "description": "Email already registered"}}
BAD_BODY = {400: {"model": Message, "description": "Body not UTF-8, JSON too deep (Python < 3.14), a value a column cannot hold"},
            413: {"model": Message, "description": "Content Too Large: a body over 64 KiB"}}
DB_DOWN = {503: {"model": Message, "description": "Database unavailable", "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}


# --- 5. The FastAPI application (Создание FastAPI приложения) ----------------
@asynccontextmanager
async def lifespan(app: FastAPI):
    # not in the tutorial: create the tables (create_tables, below; a real project migrates them)
    await create_tables()
    yield
    await engine.dispose()
    if local_postgres:  # the zero-set-up server: stopped if no other process uses it
        local_postgres.stop()


app = FastAPI(title="Users", lifespan=lifespan, responses=DB_DOWN)

# --- 6. Route handlers (Обработчики маршрутов) -------------------------------
# What the handlers of sections 7-9 share: the id they accept (a PostgreSQL
# integer, so 2**31 is a 422, not a database error) and a helper.
INT_MAX = 2**31 - 1
UserId = Annotated[int, Path(ge=1, le=INT_MAX)]


async def get_user_or_404(session: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    # lock=True (SELECT ... FOR UPDATE) before a change: a concurrent delete waits for us, or was first (404)
    db_user = await session.get(User, user_id, with_for_update=lock)
    if db_user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return db_user


# --- 7. Create and update a user (Создание и обновление пользователя) --------
@app.post("/users", status_code=201, response_model=UserPublic, responses=BAD_BODY | EMAIL_TAKEN)
async def create_user(user: UserCreate, session: SessionDep) -> User:
    db_user = User(**user.model_dump())
    session.add(db_user)
    await session.commit()  # a taken email: the unique constraint refuses the INSERT, a 409 (below)
    return db_user


@app.patch("/users/{user_id}", response_model=UserPublic, responses=BAD_BODY | NOT_FOUND | EMAIL_TAKEN)
async def update_user(user_id: UserId, user: UserUpdate, session: SessionDep) -> User:
    db_user = await get_user_or_404(session, user_id, lock=True)
    for field, value in user.model_dump(exclude_unset=True).items():  # only the fields sent
        setattr(db_user, field, value)
    await session.flush()  # sends the UPDATE (a taken email: a 409), so that refresh reads the row as changed
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


# --- Not in the tutorial: what the database refuses, and when it fails -------
# One rule for every table: a row that conflicts with stored ones (a duplicate on a unique constraint,
# a reference to a missing row, a delete of a referenced one) or with a concurrent request is a 409; a
# value a column cannot hold, a 400. A database that is down, frozen, overloaded or read-only is a 503
# with Retry-After: each wait is bounded (the engine's arguments; on a frozen server every request ended
# within 2 x DB_TIMEOUT + 1 s: tests/test_outages.py). Anything else is a bug: a 500 and its traceback.
CONFLICTS = {"users_email_key": "Email already registered"}  # other constraints: PostgreSQL's own words
RETRY_LATER = ("53", "55P03", "57014", "57P01", "57P02", "57P03", "25006")  # SQLSTATEs: see database_error


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)  # no pooled connection came free in time
async def database_error(request: Request, exc: Exception) -> JSONResponse:
    error = getattr(getattr(exc, "orig", None), "__cause__", None)  # asyncpg's own error, with PostgreSQL's fields
    sqlstate = getattr(error, "sqlstate", None) or ""  # PostgreSQL's code for the error (SQLSTATE), e.g. 23505
    if sqlstate in ("23505", "23503"):  # unique violation, foreign key violation
        return JSONResponse({"detail": CONFLICTS.get(error.constraint_name) or error.detail}, status_code=409)
    if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock: another request came first; a retry works
        return JSONResponse({"detail": "Conflict with a concurrent request: try again"}, status_code=409)
    if sqlstate.startswith("22"):  # data exception: a number out of range, a string too long
        return JSONResponse({"detail": str(error)}, status_code=400)
    # an outage: unreachable or no answer (OperationalError, from the events below), a connection the pool
    # dropped, or a SQLSTATE that means "retry later": 53 too many connections, out of resources; 55P03 lock
    # timeout; 57014 statement timeout; 57P01-03 shutting down, starting up; 25006 read-only (a failover left
    # us on a standby). Not 57P04, a dropped database: no retry brings it back
    if isinstance(exc, DBAPIError) and not (isinstance(exc, OperationalError) or exc.connection_invalidated
                                            or sqlstate.startswith(RETRY_LATER)):
        raise exc
    logging.getLogger("uvicorn.error").warning("503 Database unavailable: %s", reason(exc))
    return JSONResponse({"detail": "Database unavailable"}, status_code=503, headers={"Retry-After": "5"})


def reason(exc: BaseException) -> str:
    # the first line of the deepest error that says something, e.g. "ConnectionRefusedError: [Errno 111] ..."
    while exc.__cause__ is not None and str(exc.__cause__):
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


@event.listens_for(engine.sync_engine, "checkout")
def replace_closed_connection(dbapi_connection, connection_record, connection_proxy):
    # after a restart the pooled connections are closed: asyncpg knows it without a round trip
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("closed by the server")


ASYNCPG_ARGUMENTS = {*signature(asyncpg.connect).parameters, "prepared_statement_cache_size", "prepared_statement_name_func"}


@event.listens_for(engine.sync_engine, "do_connect")
def connect_or_operational_error(dialect, connection_record, cargs, cparams):
    # the URL's parameters reach asyncpg.connect as arguments (ssl=require); libpq's, which a provider
    # prints (sslmode=require, sslrootcert=...), asyncpg reads from a DSN; connect_timeout is its timeout
    # (new dicts: SQLAlchemy 2.0 hands every connection the same cparams)
    args = {name: value for name, value in cparams.items() if name in ASYNCPG_ARGUMENTS}
    libpq = {name: value for name, value in cparams.items() if name not in ASYNCPG_ARGUMENTS}
    args["timeout"] = float(libpq.pop("connect_timeout", args["timeout"]))
    # a server asyncpg cannot reach (refused, timed out, TLS refused) is an OSError, and SQLAlchemy 2.0
    # passes asyncpg's own errors on: make them a database error, for the 503, not every OSError
    try:
        return dialect.connect(*cargs, **args, dsn="postgresql://?" + urlencode(libpq))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise dialect.loaded_dbapi.OperationalError(str(exc) or f"no connection within {args['timeout']} s") from exc


@event.listens_for(engine.sync_engine, "handle_error")
def drop_broken_connection(context):
    # no answer within command_timeout (a frozen server, a lost network): end the connection at once
    # (SQLAlchemy's own close would first wait 2 s for a polite goodbye), have the pool drop it, and raise
    # a database error, for the 503. After 25006 (read-only) the pool drops the connection too
    if isinstance(context.original_exception, TimeoutError):
        context.connection.connection.driver_connection.terminate()
        context.is_disconnect = True
        raise OperationalError(context.statement, context.parameters, TimeoutError(f"no answer within {DB_TIMEOUT + 1} s"))
    context.is_disconnect = context.is_disconnect or getattr(context.original_exception, "sqlstate", None) == "25006"


# --- Not in the tutorial: the tables at start-up, and bad requests -----------
async def create_tables() -> None:
    # one line, not a traceback, when the database cannot be used
    if local_postgres:  # the zero-set-up server: started again after a shutdown (TestClient, once per test)
        local_postgres.start()
    try:
        if url.get_backend_name() not in ("postgresql", "postgres"):
            raise ValueError(f"DATABASE_URL names {url.drivername}://, not PostgreSQL")
        async with engine.begin() as conn:
            # several workers may start at once: one creates the tables, the others wait for this lock
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('main.py: create tables'))"))
            await conn.run_sync(Base.metadata.create_all)
            tables = await conn.run_sync(lambda sync_conn: {t: inspect(sync_conn).get_columns(t) for t in Base.metadata.tables})
        # python main.py checks in an event loop of its own (asyncio.run), then serves in another
        await engine.dispose()
    except (DBAPIError, TypeError, ValueError) as exc:  # a URL parameter of the wrong kind: connect_timeout=ten
        sys.exit(f"Cannot use the database: {reason(exc)}")
    # create_all never changes a table that exists: after a change to a model, say so here, not
    # with 500s. Only column names are compared (and a NOT NULL column the model would not fill).
    for name, columns in tables.items():
        model = set(Base.metadata.tables[name].columns.keys())
        table = {c["name"] for c in columns if c["name"] in model or not (c["nullable"] or c["default"] or c.get("identity"))}
        if table != model:
            sys.exit(f"Table {name} has the columns {sorted(c['name'] for c in columns)}, the model {sorted(model)}: "
                     "migrate it (Alembic), or drop it, rows and all, to start afresh")


def limit_body_size(app):
    # a body over 64 KiB is a 413 once that much has arrived, Content-Length or not (a user is a few hundred bytes)
    async def limited_app(scope, receive, send):
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > 64 * 1024:
                raise HTTPException(status_code=413, detail="Content Too Large")
            return message

        await app(scope, limited_receive, send)

    return limited_app


app.add_middleware(limit_body_size)


# FastAPI's own 422 echoes the input back, and a body nested thousands of levels deep would
# overflow its JSON encoder (a 500): this one leaves the input out
@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": [{key: error[key] for key in ("type", "loc", "msg")} for error in exc.errors()]}, status_code=422)


# --- 10. Run the application (Запуск приложения) ----------------------------
if __name__ == "__main__":
    # not in the tutorial: check the tables before the server starts, so that a problem is one line
    asyncio.run(create_tables())
    uvicorn.run("main:app", host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), reload=True)
