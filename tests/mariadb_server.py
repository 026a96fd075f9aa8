"""Throw-away MariaDB servers for tests (pytest fixture ``mariadb_server``).

Import the fixture into a test module (``from tests.mariadb_server import
mariadb_server``), or call ``start_mariadb`` for a server with other settings.
The server runs from Debian's ``mariadb-server`` package with its default
configuration except for what a safe evaluation needs: it listens on
127.0.0.1 on a free port, keeps its data in a private directory, runs as the
unprivileged ``mysql`` user when the tests run as root (so ``DATA DIRECTORY``
can only ever write where that user may), and adds ``NO_DIR_IN_CREATE`` to its
default ``sql_mode``. Without MariaDB the tests skip (and fail in CI, where
CYCLEQD_REQUIRE_ALL=1).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool

ADMIN_USER = "cqd_admin"
ADMIN_PASSWORD = "cqd-test-admin"
# MariaDB 10.11's default sql_mode, plus NO_DIR_IN_CREATE.
SQL_MODE = (
    "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,"
    "NO_ENGINE_SUBSTITUTION,NO_DIR_IN_CREATE"
)


@dataclass(frozen=True)
class MariaDBServer:
    host: str
    port: int
    user: str
    password: str
    root: Path
    run_as: str | None

    def connect(self, **kwargs):
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            autocommit=True,
            **kwargs,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user() -> str | None:
    """The unprivileged account the server runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("mysql", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("no unprivileged account (mysql, nobody) to run MariaDB as")


def _wait_until_up(server: MariaDBServer, process: subprocess.Popen, log: Path) -> None:
    import pymysql

    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {process.returncode}:\n{_tail(log)}")
        try:
            server.connect(connect_timeout=2).close()
            return
        except pymysql.err.OperationalError as error:
            if time.monotonic() > deadline:
                message = f"mariadbd did not accept connections in 60 s ({error}):\n{_tail(log)}"
                raise RuntimeError(message) from None
            time.sleep(0.2)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


@contextlib.contextmanager
def start_mariadb(*, max_connections: int | None = None) -> Iterator[MariaDBServer]:
    """A running server (default configuration unless ``max_connections`` is given)."""
    server_binary = require_tool("mariadbd", "mysqld")
    install_db = require_tool("mariadb-install-db", "mysql_install_db")
    run_as = _server_user()
    # Not under pytest's tmp (mode 0700, owned by us): the server user must enter it.
    root = Path(tempfile.mkdtemp(prefix="cqd-mariadb-"))
    datadir, log = root / "data", root / "server.log"
    user_flag = [f"--user={run_as}"] if run_as else []
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={datadir}",
                *user_flag,
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        # The init file runs with full rights at start-up: it creates the TCP admin account.
        init = root / "init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{ADMIN_PASSWORD}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.0.0.1' WITH GRANT OPTION;\n"
        )
        init.chmod(0o644)
        server = MariaDBServer("127.0.0.1", _free_port(), ADMIN_USER, ADMIN_PASSWORD, root, run_as)
        extra = [f"--max-connections={max_connections}"] if max_connections else []
        process = subprocess.Popen(
            [
                server_binary,
                "--no-defaults",
                f"--datadir={datadir}",
                *user_flag,
                "--bind-address=127.0.0.1",
                f"--port={server.port}",
                f"--socket={root / 'mysqld.sock'}",
                f"--pid-file={root / 'mysqld.pid'}",
                f"--log-error={log}",
                f"--init-file={init}",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                f"--sql-mode={SQL_MODE}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until_up(server, process, log)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A running MariaDB server (default max_connections 151) and an admin account on it."""
    with start_mariadb() as server:
        yield server
