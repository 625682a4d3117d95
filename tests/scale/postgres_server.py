"""A real PostgreSQL server for the tests: Debian's binaries, a temp folder, a free local port.

The session-scoped fixture :func:`postgres_url` runs ``initdb`` and ``pg_ctl start`` from the
newest ``/usr/lib/postgresql/<version>/bin``, creates one database and yields its URL; the
server stops when the session ends. PostgreSQL refuses to run as root, so under root the
binaries run as the ``postgres`` system user, on a data folder owned by it. Without the
binaries the tests that need the server are skipped, unless ``AUDIT_REQUIRE_POSTGRES=1``,
which turns the skip into a failure.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

REQUIRE_ENV = "AUDIT_REQUIRE_POSTGRES"
DATABASE = "audit_test"
_ROOT = Path("/usr/lib/postgresql")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.name.split(".") if p.isdigit())


def find_bin_dir() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    if not _ROOT.is_dir():
        return None
    found = [
        d / "bin"
        for d in _ROOT.iterdir()
        if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file()
    ]
    return max(found, key=lambda b: _version_key(b.parent), default=None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], *, as_postgres: bool, timeout: float = 60) -> str:
    if as_postgres:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stdout}\n{done.stderr}"
        )
    return done.stdout


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Start a PostgreSQL server for the session; yield ``postgresql://...`` of a fresh database."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = (
            f"No PostgreSQL server binaries under {_ROOT}/<version>/bin; install them with "
            "`apt-get install postgresql` to run these tests."
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1 requires them.)")
        pytest.skip(message)
    as_postgres = os.geteuid() == 0
    # Not under pytest's basetemp: other sessions reset its permissions (the postgres user
    # would lose its data folder) and prune old session folders.
    root = Path(tempfile.mkdtemp(prefix="audit-postgres-"))
    try:
        yield from _serve(bin_dir, root, as_postgres)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve(bin_dir: Path, root: Path, as_postgres: bool) -> Iterator[str]:
    data, sockets = root / "data", root / "sockets"
    data.mkdir()
    sockets.mkdir()
    if as_postgres:
        root.chmod(0o755)
        shutil.chown(data, user="postgres", group="postgres")
        shutil.chown(sockets, user="postgres", group="postgres")
    user = "postgres" if as_postgres else os.environ.get("USER", "postgres")
    _run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        as_postgres=as_postgres,
        timeout=120,
    )
    port = _free_port()
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=on "
        "-c max_connections=100 -c shared_buffers=32MB"
    )
    log_file = root / "server.log"
    if as_postgres:
        log_file.touch()
        shutil.chown(log_file, user="postgres", group="postgres")
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log_file),
            "-o",
            options,
            "-w",
            "start",
        ],
        as_postgres=as_postgres,
        timeout=120,
    )
    try:
        url = f"postgresql://{user}@127.0.0.1:{port}/{DATABASE}"
        _create_database(f"postgresql://{user}@127.0.0.1:{port}/postgres", DATABASE)
        yield url
    finally:
        try:
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                as_postgres=as_postgres,
                timeout=60,
            )
        except RuntimeError:  # already gone: report what the server said, fail nothing else
            logger.warning("stopping PostgreSQL failed; its log:\n%s", _tail(log_file))


def _create_database(admin_url: str, name: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _tail(path: Path, n_chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""
