"""A real PostgreSQL server for the records tests: Debian's `postgresql` binaries, a new
cluster in a temporary directory, listening on a free loopback port, stopped afterwards.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` user the
Debian package creates. `database_urls` is the parametrisation the records tests share:
every test runs on a SQLite file and on this server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.servers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's postgresql")
    return path


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a postgresql:// URL of a fresh database on a fresh server."""
    root = Path(tempfile.mkdtemp(prefix="voicebot-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(
        _as_owner([_bin("initdb"), "-D", str(data), "-U", "voicebot", "--auth=trust",
                   "-E", "UTF8", "--no-sync"]),
        check=True, capture_output=True,
    )  # fmt: skip
    log = root / "server.log"
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres")
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c full_page_writes=off"
    _servers[port] = (data, log, options)
    start_on(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "voicebot",
                 "voicebot"], capture_output=True,
            )  # fmt: skip
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {done.stderr.decode()[-500:]}")
            time.sleep(0.3)
        yield f"postgresql://voicebot@127.0.0.1:{port}/voicebot"
    finally:
        stop_on(port, check=False)
        _servers.pop(port, None)
        shutil.rmtree(root, ignore_errors=True)


# port -> (data directory, log file, server options) of the servers started here.
_servers: dict[int, tuple[Path, Path, str]] = {}


def start_on(port: int) -> None:
    data, log, options = _servers[port]
    subprocess.run(
        _as_owner([_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                   "-t", "60", "start"]),
        check=True, capture_output=True,
    )  # fmt: skip


def stop_on(port: int, *, check: bool = True) -> None:
    data, _, _ = _servers[port]
    subprocess.run(
        _as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
        check=check, capture_output=True,
    )  # fmt: skip


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def stop(url: str) -> None:
    """Stop the server of `url` at once (an outage); `start(url)` brings it back."""
    stop_on(_port(url))


def start(url: str) -> None:
    start_on(_port(url))


_databases = iter(range(1, 1_000_000))


def fresh_database(server_url: str) -> str:
    """A new empty database on the server of `server_url`; returns its URL."""
    base, _, _ = server_url.rpartition("/")
    name = f"t{os.getpid()}_{next(_databases)}"
    host_port = base.split("@", 1)[1]
    host, port = host_port.split(":")
    subprocess.run([_bin("createdb"), "-h", host, "-p", port, "-U", "voicebot", name],
                   check=True, capture_output=True)  # fmt: skip
    return f"{base}/{name}"
