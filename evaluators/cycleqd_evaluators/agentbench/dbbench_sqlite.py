"""DBBench on embedded SQLite, answering MySQL as MySQL would.

AgentBench's gold SQL and the prompts speak MySQL, so model SQL is translated
from MySQL to SQLite with ``sqlglot`` (backslash escapes, identifiers that
start with a digit, double-quoted strings), text columns compare with a
collation that behaves as MySQL's default (case- and accent-insensitive,
trailing spaces ignored by ``=``), ``LIKE`` folds case and accents as MySQL's
does, and a comparison of a column with a number compares numbers, as MySQL
converts text to DOUBLE there.

Confinement: one in-memory database per task; an authorizer refuses ATTACH and
DETACH (files on the host), extension loading, virtual tables and every
PRAGMA but a few read-only ones, so nothing the model issues can change
process-wide SQLite state (heap limits, temp directories) that later tasks
would inherit. A progress handler ends any statement past its time limit, the
database (tables the model creates included) is capped in size, and results
are capped in bytes while rows are fetched.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time
import unicodedata
from typing import Any

import sqlglot
from sqlglot import exp

from cycleqd_evaluators.agentbench.db_backends import (
    DEFAULT_MAX_RESULT_BYTES,
    DatabaseBackend,
    QueryOutcome,
    TableSpec,
    TaskDatabase,
    fetch_capped,
    quote_identifier,
    table_fingerprint,
)

COLLATION = "MYSQL_CI"
# Read-only PRAGMAs a model may use to look at its own table; every other one is refused.
READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
    }
)
_DENIED_FUNCTIONS = frozenset({"load_extension"})


# ------------------------------------------------------------- MySQL semantics


@functools.lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Case- and accent-free form of a text (MySQL's utf8mb4 default collations)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def mysql_collate(left: str, right: str) -> int:
    """Compare as MySQL's default collation: folded, trailing spaces ignored (PAD SPACE)."""
    a, b = fold(left.rstrip(" ")), fold(right.rstrip(" "))
    return (a > b) - (a < b)


@functools.lru_cache(maxsize=4096)
def _like_regex(pattern: str, escape: str) -> re.Pattern[str]:
    parts: list[str] = []
    chars = iter(fold(pattern))
    for char in chars:
        if char == escape:
            parts.append(re.escape(next(chars, escape)))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def mysql_like(pattern: Any, value: Any, escape: Any = "\\") -> int | None:
    """SQLite's like(pattern, value[, escape]) with MySQL's folding and default escape ``\\``."""
    if pattern is None or value is None:
        return None
    escape = str(escape) if escape else "\\"
    return int(_like_regex(str(pattern), escape).fullmatch(fold(str(value))) is not None)


def _numeric_comparison(node: exp.Expression) -> exp.Expression:
    """``col = 16`` compares numbers in MySQL (text is converted to DOUBLE), text in SQLite."""
    if isinstance(node, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
        left, right = node.left, node.right
        if isinstance(left, exp.Column) and _is_number(right):
            node.set("this", exp.Cast(this=left.copy(), to=exp.DataType.build("double")))
        elif isinstance(right, exp.Column) and _is_number(left):
            node.set("expression", exp.Cast(this=right.copy(), to=exp.DataType.build("double")))
    return node


def _is_number(node: exp.Expression) -> bool:
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal) and node.is_number


_UNTOUCHED = (exp.Pragma, exp.Command, exp.Set)


def translate_mysql(sql: str) -> list[str]:
    """MySQL text to SQLite statements; SQL sqlglot cannot read is passed on unchanged.

    The untranslated text then fails (or works) on SQLite with SQLite's own
    error message, which is what the model sees.
    """
    try:
        statements = [s for s in sqlglot.parse(sql, read="mysql") if s is not None]
        translated = [
            (s if isinstance(s, _UNTOUCHED) else s.transform(_numeric_comparison)).sql(
                dialect="sqlite"
            )
            for s in statements
        ]
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError, TypeError):
        return [sql]
    return translated if translated and all(translated) else [sql]


# ------------------------------------------------------------------ confinement


def _authorize(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
    """Refuse everything that reaches beyond the task's own in-memory database."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        return (
            sqlite3.SQLITE_OK if (arg1 or "").lower() in READ_ONLY_PRAGMAS else sqlite3.SQLITE_DENY
        )
    if action in (sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class SQLiteBackend(DatabaseBackend):
    """In-memory SQLite, one database per task (the default: needs no server)."""

    def __init__(
        self,
        *,
        query_timeout_s: float = 10.0,
        max_value_bytes: int = 10_000_000,
        max_database_bytes: int = 64_000_000,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ):
        self.query_timeout_s = query_timeout_s
        self.max_value_bytes = max_value_bytes
        self.max_database_bytes = max_database_bytes
        self.max_result_bytes = max_result_bytes

    def create(self, table: TableSpec) -> TaskDatabase:
        return SQLiteTaskDatabase(table, backend=self)


class SQLiteTaskDatabase(TaskDatabase):
    def __init__(self, table: TableSpec, *, backend: SQLiteBackend):
        self.backend = backend
        # Episodes step in a thread pool: the connection moves between threads,
        # but one episode never uses it from two threads at once.
        self.connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if hasattr(self.connection, "enable_load_extension"):
            self.connection.enable_load_extension(False)
        if hasattr(self.connection, "setlimit"):  # Python >= 3.11
            self.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, backend.max_value_bytes)
        self.connection.create_collation(COLLATION, mysql_collate)
        self.connection.create_function("like", 2, mysql_like, deterministic=True)
        self.connection.create_function("like", 3, mysql_like, deterministic=True)
        self._deadline = float("inf")
        self.connection.set_progress_handler(self._past_deadline, 1_000)
        columns = ", ".join(
            f"{quote_identifier(c)} TEXT COLLATE {COLLATION}" for c in table.columns
        )
        self.connection.execute(f"CREATE TABLE {quote_identifier(table.name)} ({columns})")
        placeholders = ", ".join("?" for _ in table.columns)
        self.connection.executemany(
            f"INSERT INTO {quote_identifier(table.name)} VALUES ({placeholders})", table.rows
        )
        # Tables the model builds live in memory: cap their size (main and temp), and
        # the model cannot raise the cap, since PRAGMAs are refused from here on.
        self.connection.execute("PRAGMA temp_store = MEMORY")
        for schema in ("main", "temp"):
            page_size = self.connection.execute(f"PRAGMA {schema}.page_size").fetchone()[0]
            pages = max(1, backend.max_database_bytes // page_size)
            self.connection.execute(f"PRAGMA {schema}.max_page_count = {pages}")
        self.connection.set_authorizer(_authorize)

    def _past_deadline(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def execute(self, sql: str) -> QueryOutcome:
        """Run each translated statement in turn; stop at the first error."""
        self._deadline = time.monotonic() + self.backend.query_timeout_s
        outcome = QueryOutcome()
        try:
            for statement in translate_mysql(sql):
                cursor = self.connection.execute(statement)
                if cursor.description:
                    outcome.rows, outcome.truncated = fetch_capped(
                        cursor, self.backend.max_result_bytes
                    )
                    cursor.close()
                else:
                    outcome.rows, outcome.truncated = [], False
            return outcome
        except sqlite3.OperationalError as error:
            if str(error) == "interrupted":
                limit = self.backend.query_timeout_s
                return QueryOutcome(error=f"query exceeded the {limit:g} s time limit")
            return QueryOutcome(error=str(error))
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as error:
            return QueryOutcome(error=str(error) or type(error).__name__)
        finally:
            self._deadline = float("inf")

    def fingerprint(self, table: TableSpec) -> str | None:
        columns = ", ".join(quote_identifier(c) for c in table.columns)
        self._deadline = time.monotonic() + self.backend.query_timeout_s
        try:
            rows = self.connection.execute(
                f"SELECT {columns} FROM {quote_identifier(table.name)}"
            ).fetchall()
        except sqlite3.Error:
            return None
        finally:
            self._deadline = float("inf")
        return table_fingerprint(rows)

    def close(self) -> None:
        self.connection.close()
