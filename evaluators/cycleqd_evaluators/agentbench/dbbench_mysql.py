"""DBBench on a MySQL or MariaDB server, with limits the model's session cannot lift.

Each task gets a database and a user named ``<prefix><random hex>``; the user
may only touch its own database, and both are dropped when the task ends.

- Time: a session limit (``max_statement_time``) is only a first line, since
  ``SET STATEMENT max_statement_time=0 FOR ...`` lifts it. The real limit is a
  watchdog: when a statement's time is up, a separate administrative connection
  ``KILL``s the task's connection. Clean-up kills the task user's connections
  first, then drops with a bounded lock wait, so a runaway query never blocks
  the next task.
- Connections: model SQL runs on a connection opened for that one step and
  closed after it (AgentBench reconnects before every statement too), so the
  server sees at most ``concurrency`` task connections plus two administrative
  ones, whatever the number of tasks (a default server allows 151).
- Files: every task session runs with ``NO_DIR_IN_CREATE`` (``DATA DIRECTORY``
  and ``INDEX DIRECTORY`` are ignored), and model SQL that names ``sql_mode``
  or runs dynamic SQL is refused, since a session may change its own mode. The
  server itself should also run as an unprivileged user with
  ``NO_DIR_IN_CREATE`` in its global ``sql_mode`` (a warning says so when the
  mode is missing).
- Memory: results are read unbuffered and capped in bytes while fetching.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from typing import Any

from cycleqd_evaluators.agentbench.db_backends import (
    DEFAULT_MAX_RESULT_BYTES,
    GROUP_CONCAT_MAX_LEN,
    DatabaseBackend,
    QueryOutcome,
    TableSpec,
    TaskDatabase,
    fetch_capped,
    quote_identifier,
)

logger = logging.getLogger(__name__)

# A session may change its own sql_mode (and so lift NO_DIR_IN_CREATE), directly or
# through dynamic SQL; no DBBench task needs either, so such text is refused.
_SESSION_ESCAPES = re.compile(r"sql_mode|\bprepare\s|\bexecute\s", re.IGNORECASE)
KILL_GRACE_S = 1.0  # the server's own limit fires first; the watchdog is the guarantee
CLEANUP_LOCK_WAIT_S = 10


class MySQLBackend(DatabaseBackend):
    """A MySQL or MariaDB server; the account given needs CREATE USER, GRANT and PROCESS/SUPER (KILL)."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        *,
        query_timeout_s: float = 10.0,
        prefix: str = "cqd_",
        connect_timeout_s: float = 10.0,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ):
        import pymysql  # imported here: SQLite users need no MySQL client

        self._pymysql = pymysql
        self.host, self.port = host, port
        self.query_timeout_s = query_timeout_s
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.max_result_bytes = max_result_bytes
        self._login = {"host": host, "port": port, "user": user, "password": password}
        self._admin_lock, self._killer_lock = threading.Lock(), threading.Lock()
        self._admin = self._connect_admin()
        self._killer = self._connect_admin()
        version, sql_mode = self._run(self._admin, "SELECT VERSION(), @@GLOBAL.sql_mode")[0]
        self.is_mariadb = "mariadb" in str(version).lower()
        if "NO_DIR_IN_CREATE" not in str(sql_mode).upper():
            logger.warning(
                "MySQL server %s:%s: global sql_mode lacks NO_DIR_IN_CREATE, so model SQL that "
                "resets its session sql_mode can place table files with DATA DIRECTORY; add it "
                "to the server's sql_mode and run the server as an unprivileged user",
                host,
                port,
            )

    # ---------------------------------------------------------- admin side

    def _connect_admin(self) -> Any:
        connection = self._pymysql.connect(
            **self._login,
            autocommit=True,
            connect_timeout=self.connect_timeout_s,
            read_timeout=int(self.query_timeout_s) + 60,
            write_timeout=60,
            charset="utf8mb4",
        )
        with connection.cursor() as cursor:
            cursor.execute(f"SET SESSION lock_wait_timeout = {CLEANUP_LOCK_WAIT_S}")
            cursor.execute(f"SET SESSION group_concat_max_len = {GROUP_CONCAT_MAX_LEN}")
        return connection

    def _run(self, connection: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def admin(self, sql: str, args: Any = None, *, many: bool = False) -> list[tuple[Any, ...]]:
        """Run a trusted statement (``many``: once per row of ``args``) on the admin connection."""
        with self._admin_lock:
            try:
                self._admin.ping(reconnect=False)
            except self._pymysql.err.Error:
                self._admin = self._connect_admin()
            if many:
                with self._admin.cursor() as cursor:
                    cursor.executemany(sql, args)
                return []
            return self._run(self._admin, sql, args)

    def kill(self, connection_id: int) -> None:
        """End a task connection and its statement; on its own connection, never queued behind admin work."""
        with self._killer_lock:
            try:
                self._killer.ping(reconnect=False)
            except self._pymysql.err.Error:
                self._killer = self._connect_admin()
            try:
                self._run(self._killer, f"KILL CONNECTION {int(connection_id)}")
            except self._pymysql.err.MySQLError as error:
                if error.args and error.args[0] == 1094:  # unknown thread: already gone
                    return
                raise

    def bounded(self, sql: str) -> str:
        """The statement with a server-side time limit for the admin session."""
        seconds = self.query_timeout_s
        if self.is_mariadb:
            return f"SET STATEMENT max_statement_time = {seconds:.3f} FOR {sql}"
        return sql.replace("SELECT", f"SELECT /*+ MAX_EXECUTION_TIME({int(seconds * 1000)}) */", 1)

    def create(self, table: TableSpec) -> TaskDatabase:
        return MySQLTaskDatabase(self, table)

    def close(self) -> None:
        for lock, connection in (
            (self._admin_lock, self._admin),
            (self._killer_lock, self._killer),
        ):
            with lock:
                try:
                    connection.close()
                except self._pymysql.err.Error:
                    pass


class MySQLTaskDatabase(TaskDatabase):
    def __init__(self, backend: MySQLBackend, table: TableSpec):
        self.backend = backend
        self.name = backend.prefix + secrets.token_hex(6)
        self.password = secrets.token_hex(16)
        database, account = quote_identifier(self.name), f"'{self.name}'@'%'"
        backend.admin(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        try:
            backend.admin(f"CREATE USER {account} IDENTIFIED BY '{self.password}'")
            backend.admin(
                "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, "
                f"CREATE TEMPORARY TABLES, CREATE VIEW, SHOW VIEW ON {database}.* TO {account}"
            )
            target = f"{database}.{quote_identifier(table.name)}"
            columns = ", ".join(f"{quote_identifier(c)} TEXT" for c in table.columns)
            backend.admin(f"CREATE TABLE {target} ({columns})")
            if table.rows:
                placeholders = ", ".join("%s" for _ in table.columns)
                backend.admin(
                    f"INSERT INTO {target} VALUES ({placeholders})", table.rows, many=True
                )
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Any:
        pymysql = self.backend._pymysql
        connection = pymysql.connect(
            host=self.backend.host,
            port=self.backend.port,
            user=self.name,
            password=self.password,
            database=self.name,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=self.backend.connect_timeout_s,
            read_timeout=int(self.backend.query_timeout_s + KILL_GRACE_S) + 10,  # a backstop only
            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
            cursorclass=pymysql.cursors.SSCursor,
        )
        seconds = self.backend.query_timeout_s
        with connection.cursor() as cursor:
            cursor.execute(
                "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_DIR_IN_CREATE')"
            )
            if self.backend.is_mariadb:
                cursor.execute(f"SET SESSION max_statement_time = {seconds:.3f}")
            else:
                cursor.execute(f"SET SESSION max_execution_time = {int(seconds * 1000)}")
            cursor.execute("SELECT CONNECTION_ID()")
            connection_id = cursor.fetchone()[0]
        connection.cqd_id = connection_id
        return connection

    def execute(self, sql: str) -> QueryOutcome:
        """One fresh connection per step; a watchdog kills it when the time is up."""
        pymysql = self.backend._pymysql
        if _SESSION_ESCAPES.search(sql):
            return QueryOutcome(
                error="changing sql_mode and dynamic SQL (PREPARE/EXECUTE) are not allowed here"
            )
        try:
            connection = self._connect()
        except pymysql.err.MySQLError as error:
            return QueryOutcome(error=_mysql_message(error))
        fired = threading.Event()

        def watchdog() -> None:
            fired.set()
            try:
                self.backend.kill(connection.cqd_id)
            except Exception:  # noqa: BLE001 - logged; the read timeout still backs it up
                logger.exception("could not kill connection %s", connection.cqd_id)

        timer = threading.Timer(self.backend.query_timeout_s + KILL_GRACE_S, watchdog)
        timer.daemon = True
        timer.start()
        outcome = QueryOutcome()
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            while True:
                if cursor.description:
                    outcome.rows, outcome.truncated = fetch_capped(
                        iter(cursor.fetchone, None), self.backend.max_result_bytes
                    )
                    if outcome.truncated:
                        # Stop reading: the server ends the statement; what it
                        # had already sent is read and dropped row by row.
                        self.backend.kill(connection.cqd_id)
                        _drain(cursor)
                        break
                else:
                    outcome.rows = []
                if not cursor.nextset():
                    break
        except pymysql.err.MySQLError as error:
            if fired.is_set():
                limit = self.backend.query_timeout_s
                return QueryOutcome(error=f"query exceeded the {limit:g} s time limit")
            return QueryOutcome(error=_mysql_message(error))
        except (ValueError, TypeError, UnicodeError) as error:
            return QueryOutcome(error=str(error))
        finally:
            timer.cancel()
            _close_quietly(connection)
        return outcome

    def fingerprint(self, table: TableSpec) -> str | None:
        """The hash computed by the server itself, as AgentBench computes it."""
        columns = ", ".join(quote_identifier(c) for c in table.columns)
        target = f"{quote_identifier(self.name)}.{quote_identifier(table.name)}"
        query = self.backend.bounded(
            "SELECT MD5(GROUP_CONCAT(rowhash ORDER BY rowhash)) FROM ("
            f"SELECT SUBSTRING(MD5(CONCAT_WS(',', {columns})), 1, 5) AS rowhash "
            f"FROM {target}) AS hashed"
        )
        try:
            value = self.backend.admin(query)[0][0]
        except self.backend._pymysql.err.MySQLError:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def close(self) -> None:
        """Kill what the task user still runs, then drop user and database with bounded waits."""
        backend = self.backend
        try:
            rows = backend.admin(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (self.name,)
            )
            for (connection_id,) in rows:
                backend.kill(connection_id)
            backend.admin(f"DROP USER IF EXISTS '{self.name}'@'%'")
            backend.admin(f"DROP DATABASE IF EXISTS {quote_identifier(self.name)}")
        except backend._pymysql.err.MySQLError as error:
            logger.warning(
                "could not drop task database %s (%s); drop it by hand", self.name, error
            )


def _drain(cursor: Any) -> None:
    """Read what the killed statement had sent; then mark the result finished, or
    pymysql tries to read it again from a closed socket when it is collected."""
    result = getattr(cursor, "_result", None)
    try:
        cursor.close()
    except Exception:  # noqa: BLE001 - the kill ends the result with an error
        pass
    if result is not None:
        result.unbuffered_active = False


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - killed or half-read; the socket is closed either way
        try:
            connection._force_close()
        except Exception:  # noqa: BLE001
            pass


def _mysql_message(error: Exception) -> str:
    """``<code> (<sqlstate>): <message>``, as MySQL's Python connector (AgentBench's) prints it."""
    args = getattr(error, "args", ())
    if len(args) != 2:
        return str(error)
    sqlstate = getattr(error, "sqlstate", None)
    return f"{args[0]} ({sqlstate}): {args[1]}" if sqlstate else f"{args[0]}: {args[1]}"
