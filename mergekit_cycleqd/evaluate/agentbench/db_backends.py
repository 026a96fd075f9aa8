"""Databases for DBBench episodes: embedded SQLite or a MySQL/MariaDB server.

Every task gets a fresh database holding its one table, created the way
AgentBench creates it (every column TEXT, rows inserted as given), so that the
table fingerprint after an INSERT/UPDATE matches the dataset's ``answer_md5``.
Model SQL is untrusted: SQLite refuses ATTACH (no files on the host) and
interrupts long queries; on MySQL each task runs as a throw-away user whose
rights cover only that task's database, with a per-statement time limit.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# MySQL's default group_concat_max_len: the fingerprint string is cut there, as on
# the server AgentBench's hashes come from.
GROUP_CONCAT_MAX_LEN = 1024
MAX_FETCH_ROWS = 10_000


@dataclass(frozen=True)
class TableSpec:
    """One DBBench table: name, column names (in order) and rows."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass
class QueryOutcome:
    """Rows of a statement (empty for statements without a result) or an error message."""

    rows: list[tuple[Any, ...]]
    error: str | None = None


def quote_identifier(name: str) -> str:
    """Backtick-quote a name (both SQLite and MySQL accept backticks)."""
    return "`" + name.replace("`", "``") + "`"


def table_fingerprint(rows: Sequence[Sequence[Any]]) -> str | None:
    """AgentBench's table hash, computed in Python from the table's rows.

    Per row: MD5 of the non-NULL values joined by ',' (SQL ``CONCAT_WS``), first
    five hex digits; the row hashes sorted and joined by ',' (``GROUP_CONCAT``,
    cut at 1024 bytes); MD5 of that. An empty table has no hash (SQL NULL).
    """
    if not rows:
        return None
    row_hashes = sorted(
        hashlib.md5(
            ",".join(_sql_text(v) for v in row if v is not None).encode("utf-8")
        ).hexdigest()[:5]
        for row in rows
    )
    joined = ",".join(row_hashes).encode("utf-8")[:GROUP_CONCAT_MAX_LEN]
    return hashlib.md5(joined).hexdigest()


def _sql_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class TaskDatabase(ABC):
    """A fresh database with one task's table; dropped by ``close``."""

    @abstractmethod
    def execute(self, sql: str) -> QueryOutcome:
        """Run one statement of model SQL under the time limit; never raises for SQL errors."""

    @abstractmethod
    def fingerprint(self, table: TableSpec) -> str | None:
        """The table's hash over its original columns (None when empty or unreadable)."""

    @abstractmethod
    def close(self) -> None:
        """Drop the database."""


class DatabaseBackend(ABC):
    """Creates one TaskDatabase per task."""

    @abstractmethod
    def create(self, table: TableSpec) -> TaskDatabase: ...

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release server connections; default: nothing."""


# --------------------------------------------------------------------- SQLite


class SQLiteBackend(DatabaseBackend):
    """In-memory SQLite, one database per task (the default: needs no server)."""

    def __init__(self, query_timeout_s: float = 10.0, max_value_bytes: int = 10_000_000):
        self.query_timeout_s = query_timeout_s
        self.max_value_bytes = max_value_bytes

    def create(self, table: TableSpec) -> TaskDatabase:
        return SQLiteTaskDatabase(table, self.query_timeout_s, self.max_value_bytes)


def _deny_attach(action: int, *_: Any) -> int:
    """SQLite authorizer: ATTACH/DETACH would create or read files on the host."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class SQLiteTaskDatabase(TaskDatabase):
    def __init__(self, table: TableSpec, query_timeout_s: float, max_value_bytes: int):
        # Episodes step in a thread pool: the connection moves between threads,
        # but one episode never uses it from two threads at once.
        self.connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if hasattr(self.connection, "setlimit"):  # Python >= 3.11
            self.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        self.query_timeout_s = query_timeout_s
        self._deadline = float("inf")
        self.connection.set_progress_handler(self._past_deadline, 10_000)
        columns = ", ".join(f"{quote_identifier(c)} TEXT" for c in table.columns)
        self.connection.execute(f"CREATE TABLE {quote_identifier(table.name)} ({columns})")
        placeholders = ", ".join("?" for _ in table.columns)
        self.connection.executemany(
            f"INSERT INTO {quote_identifier(table.name)} VALUES ({placeholders})", table.rows
        )
        self.connection.set_authorizer(_deny_attach)

    def _past_deadline(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def execute(self, sql: str) -> QueryOutcome:
        self._deadline = time.monotonic() + self.query_timeout_s
        try:
            cursor = self.connection.execute(sql)
            rows = cursor.fetchmany(MAX_FETCH_ROWS) if cursor.description else []
            return QueryOutcome(rows=[tuple(r) for r in rows])
        except sqlite3.OperationalError as error:
            if str(error) == "interrupted":
                return QueryOutcome([], f"query exceeded the {self.query_timeout_s:g} s time limit")
            return QueryOutcome([], str(error))
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as error:
            return QueryOutcome([], str(error) or type(error).__name__)
        finally:
            self._deadline = float("inf")

    def fingerprint(self, table: TableSpec) -> str | None:
        columns = ", ".join(quote_identifier(c) for c in table.columns)
        try:
            rows = self.connection.execute(
                f"SELECT {columns} FROM {quote_identifier(table.name)}"
            ).fetchall()
        except sqlite3.Error:
            return None
        return table_fingerprint(rows)

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------- MySQL / MariaDB


class MySQLBackend(DatabaseBackend):
    """A MySQL or MariaDB server; the account given needs CREATE USER and GRANT rights.

    Each task gets a database and a user named ``<prefix><random hex>``; the user
    may only touch its own database, and both are dropped when the task ends.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        query_timeout_s: float = 10.0,
        prefix: str = "cqd_",
        connect_timeout_s: float = 10.0,
    ):
        import pymysql  # imported here: SQLite users need no MySQL client

        self._pymysql = pymysql
        self.host, self.port = host, port
        self.query_timeout_s = query_timeout_s
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self._admin_lock = threading.Lock()
        self._admin_login = {"host": host, "port": port, "user": user, "password": password}
        self._admin = self._connect_admin()
        with self._admin.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            self.is_mariadb = "mariadb" in str(cursor.fetchone()[0]).lower()

    def _connect_admin(self) -> Any:
        return self._pymysql.connect(
            **self._admin_login,
            autocommit=True,
            connect_timeout=self.connect_timeout_s,
            charset="utf8mb4",
        )

    def admin(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a trusted statement on the administrative connection (serialised)."""
        with self._admin_lock:
            try:
                self._admin.ping(reconnect=False)
            except self._pymysql.err.Error:
                self._admin = self._connect_admin()
            with self._admin.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())

    def create(self, table: TableSpec) -> TaskDatabase:
        return MySQLTaskDatabase(self, table)

    def close(self) -> None:
        with self._admin_lock:
            self._admin.close()


class MySQLTaskDatabase(TaskDatabase):
    def __init__(self, backend: MySQLBackend, table: TableSpec):
        self.backend = backend
        self.name = backend.prefix + secrets.token_hex(6)
        self.password = secrets.token_hex(16)
        database, account = quote_identifier(self.name), f"'{self.name}'@'%'"
        backend.admin(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        self.connection = None
        try:
            backend.admin(f"CREATE USER {account} IDENTIFIED BY '{self.password}'")
            backend.admin(
                "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, "
                f"CREATE TEMPORARY TABLES, CREATE VIEW, SHOW VIEW ON {database}.* TO {account}"
            )
            self._connect()
            columns = ", ".join(f"{quote_identifier(c)} TEXT" for c in table.columns)
            placeholders = ", ".join("%s" for _ in table.columns)
            with self.connection.cursor() as cursor:
                cursor.execute(f"CREATE TABLE {quote_identifier(table.name)} ({columns})")
                if table.rows:
                    cursor.executemany(
                        f"INSERT INTO {quote_identifier(table.name)} VALUES ({placeholders})",
                        table.rows,
                    )
        except BaseException:
            self.close()
            raise

    def _set_time_limit(self) -> None:
        seconds = self.backend.query_timeout_s
        with self.connection.cursor() as cursor:
            if self.backend.is_mariadb:
                cursor.execute(f"SET SESSION max_statement_time = {seconds:.3f}")
            else:
                cursor.execute(f"SET SESSION max_execution_time = {int(seconds * 1000)}")

    def execute(self, sql: str) -> QueryOutcome:
        pymysql = self.backend._pymysql
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(sql)
                rows = cursor.fetchmany(MAX_FETCH_ROWS) if cursor.description else []
                return QueryOutcome(rows=[tuple(r) for r in rows])
        except pymysql.err.OperationalError as error:
            self._reconnect()  # after a read timeout the session is gone
            return QueryOutcome([], _mysql_message(error))
        except pymysql.err.MySQLError as error:
            return QueryOutcome([], _mysql_message(error))
        except (ValueError, TypeError) as error:  # e.g. '%' formatting inside pymysql
            return QueryOutcome([], str(error))

    def _connect(self) -> None:
        self.connection = self.backend._pymysql.connect(
            host=self.backend.host,
            port=self.backend.port,
            user=self.name,
            password=self.password,
            database=self.name,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=self.backend.connect_timeout_s,
            # A backstop if the server-side limit does not fire (e.g. MySQL's
            # max_execution_time covers only SELECT).
            read_timeout=int(self.backend.query_timeout_s) + 10,
        )
        self._set_time_limit()

    def _reconnect(self) -> None:
        """A fresh session after a read timeout or a server-side disconnect."""
        try:
            self.connection.ping(reconnect=False)
        except self.backend._pymysql.err.Error:
            self._connect()

    def fingerprint(self, table: TableSpec) -> str | None:
        """The hash computed by the server itself, as AgentBench computes it."""
        columns = ", ".join(quote_identifier(c) for c in table.columns)
        query = (
            "SELECT MD5(GROUP_CONCAT(rowhash ORDER BY rowhash)) FROM ("
            f"SELECT SUBSTRING(MD5(CONCAT_WS(',', {columns})), 1, 5) AS rowhash "
            f"FROM {quote_identifier(table.name)}) AS hashed"
        )
        try:
            self._reconnect()
            with self.connection.cursor() as cursor:
                cursor.execute(f"SET SESSION group_concat_max_len = {GROUP_CONCAT_MAX_LEN}")
                cursor.execute(query)
                value = cursor.fetchone()[0]
        except self.backend._pymysql.err.MySQLError:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:  # noqa: BLE001 - already broken; dropping is what matters
                pass
        self.backend.admin(f"DROP USER IF EXISTS '{self.name}'@'%'")
        self.backend.admin(f"DROP DATABASE IF EXISTS {quote_identifier(self.name)}")


def _mysql_message(error: Exception) -> str:
    args = getattr(error, "args", ())
    if len(args) == 2:
        return f"{args[0]} {args[1]}"
    return str(error)
