"""The contract every DBBench database keeps, and what both engines share.

Every task gets a fresh database holding its one table, created the way
AgentBench creates it (every column TEXT, rows inserted as given), so that the
table fingerprint after an INSERT/UPDATE matches the dataset's ``answer_md5``.
Model SQL is untrusted: each engine (``dbbench_sqlite``, ``dbbench_mysql``)
confines it to its task's database, limits its time from outside the model's
reach, and caps what a result may hold in bytes *while* fetching, so no query
can fill the evaluator's memory.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# MySQL's default group_concat_max_len: the fingerprint string is cut there, as on
# the server AgentBench's hashes come from.
GROUP_CONCAT_MAX_LEN = 1024
DEFAULT_MAX_RESULT_BYTES = 1_000_000


@dataclass(frozen=True)
class TableSpec:
    """One DBBench table: name, column names (in order) and rows (None = SQL NULL)."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass
class QueryOutcome:
    """Rows of the last statement that returned any (capped), or an error message."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    error: str | None = None
    truncated: bool = False


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


def _value_size(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    return 16  # numbers, NULL, dates: small and bounded


def _cut(value: Any, budget: int) -> Any:
    if isinstance(value, (str, bytes, bytearray)) and len(value) > budget:
        return value[: max(budget, 0)]
    return value


def fetch_capped(
    rows: Iterable[Sequence[Any]], max_bytes: int
) -> tuple[list[tuple[Any, ...]], bool]:
    """Take rows one at a time until ``max_bytes`` of values are held.

    The row that crosses the cap is kept with its long values cut to what is
    left of the budget, and nothing more is read: a result of ten 9 MB blobs
    costs the evaluator one row, not 90 MB. Returns (rows, truncated).
    """
    kept: list[tuple[Any, ...]] = []
    used = 0
    for row in rows:
        size = sum(_value_size(v) for v in row)
        if used + size > max_bytes:
            kept.append(tuple(_cut(v, max_bytes - used) for v in row))
            return kept, True
        kept.append(tuple(row))
        used += size
    return kept, False


class TaskDatabase(ABC):
    """A fresh database with one task's table; dropped by ``close``."""

    @abstractmethod
    def execute(self, sql: str) -> QueryOutcome:
        """Run model SQL (one or more statements) under the limits; never raises for SQL errors."""

    @abstractmethod
    def fingerprint(self, table: TableSpec) -> str | None:
        """The table's hash over its original columns (None when empty or unreadable)."""

    @abstractmethod
    def close(self) -> None:
        """Drop the database; returns within bounded time even after a runaway query."""


class DatabaseBackend(ABC):
    """Creates one TaskDatabase per task."""

    @abstractmethod
    def create(self, table: TableSpec) -> TaskDatabase: ...

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release server connections; default: nothing."""
