"""DBBench task records (AgentBench's JSONL format) loaded into typed tasks, record by record.

Real files hold imperfect records: AgentBench v0.2's ``standard.jsonl`` (and files
built from it) has table rows with fewer values than columns, or none. Such
rows are padded with NULL, which leaves a row's AgentBench hash unchanged
(``CONCAT_WS`` skips NULL). A record that cannot be made loadable (no table,
more values than columns, an unreadable ``answer_md5``...) is skipped and
reported with its line and reason; one bad record never refuses a whole file.
Each task keeps its record's position in the file as ``index``, so a
selection names the same record whatever was skipped before it.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd_evaluators.agentbench.db_backends import TableSpec
from mergekit_cycleqd.evaluate import TaskFileError

logger = logging.getLogger(__name__)

MUTATIONS = ("INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class DBTask:
    """One DBBench record, with its table made loadable on MySQL and SQLite alike."""

    index: int
    description: str
    add_description: str
    kind: str
    label: tuple[Any, ...]
    answer_md5: str | None
    table: TableSpec
    gold_sql: str | None = None
    padded_rows: int = 0

    @property
    def category(self) -> str:
        """INSERT, UPDATE, DELETE, or SELECT for every query kind."""
        return self.kind if self.kind in MUTATIONS else "SELECT"


@dataclass
class LoadReport:
    """What a file held: the loaded tasks and, per skipped record, where and why."""

    path: Path
    tasks: list[DBTask] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (record index, reason)

    @property
    def padded(self) -> list[int]:
        return [t.index for t in self.tasks if t.padded_rows]


def _column_names(raw: list[Any]) -> tuple[str, ...]:
    """MySQL rejects empty names and names ending in spaces: name them by position."""
    names: list[str] = []
    for position, name in enumerate(raw, 1):
        name = str(name).rstrip() or f"column_{position}"
        candidate, copy = name, 2
        while candidate.lower() in (n.lower() for n in names):
            candidate, copy = f"{name}_{copy}", copy + 1
        names.append(candidate)
    return tuple(names)


def _rows(raw: Any, width: int) -> tuple[tuple[tuple[Any, ...], ...], int]:
    """Rows padded with NULL to ``width``; a missing or null row list is an empty table."""
    if raw is None:
        return (), 0
    if not isinstance(raw, list):
        raise ValueError(f"table.table_info.rows is a {type(raw).__name__}, not a list")
    rows, padded = [], 0
    for number, row in enumerate(raw):
        if row is None:
            row = []
        if not isinstance(row, list):
            raise ValueError(f"table.table_info.rows[{number}] is not a list")
        if len(row) > width:
            raise ValueError(
                f"table.table_info.rows[{number}] has {len(row)} values for {width} columns"
            )
        if len(row) < width:
            padded += 1
            row = row + [None] * (width - len(row))
        rows.append(tuple(row))
    return tuple(rows), padded


def parse_task(row: dict[str, Any], index: int) -> DBTask:
    """One record as a task; ValueError names the field that makes it unloadable."""
    if not isinstance(row, dict):
        raise ValueError(f"record is a {type(row).__name__}, not an object")
    try:
        kind = str(row["type"][0])
        table = row["table"]
        info = table["table_info"]
        columns = _column_names([c["name"] for c in info["columns"]])
        table_name = str(table["table_name"])
        description = str(row["description"])
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"missing or malformed field {error}") from None
    if not columns:
        raise ValueError("table.table_info.columns is empty")
    rows, padded = _rows(info.get("rows"), len(columns))
    label = tuple(row.get("label") or ())
    answer_md5 = None
    sql = row.get("sql")
    gold_sql = sql.get("query") if isinstance(sql, dict) else None
    if kind in MUTATIONS:
        answer_md5 = _parse_md5(row.get("answer_md5"), kind)
        gold_sql = str(label[0]) if label else None
    return DBTask(
        index=index,
        description=description,
        add_description=str(row.get("add_description") or ""),
        kind=kind,
        label=label,
        answer_md5=answer_md5,
        table=TableSpec(table_name, columns, rows),
        gold_sql=gold_sql,
        padded_rows=padded,
    )


def _parse_md5(value: Any, kind: str) -> str | None:
    """``answer_md5`` is the text of a MySQL result, e.g. "[('0a1b...',)]" (None: empty table)."""
    if not isinstance(value, str):
        raise ValueError(f"field answer_md5 is missing (needed for a {kind} task)")
    try:
        return ast.literal_eval(value)[0][0]
    except (ValueError, SyntaxError, IndexError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"field answer_md5 = {value[:80]!r} is not a hash result") from None


def load_dbbench(path: Path) -> LoadReport:
    """Every loadable record of a JSONL file; skipped ones are logged with line and reason."""
    report = LoadReport(Path(path))
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise TaskFileError(f"DBBench file {path}: cannot be read ({error.strerror})") from None
    with handle:
        records = [line for line in handle if line.strip()]
    for index, line in enumerate(records):
        try:
            report.tasks.append(parse_task(json.loads(line), index))
        except json.JSONDecodeError as error:
            report.skipped.append((index, f"not valid JSON ({error.msg})"))
        except ValueError as error:
            report.skipped.append((index, str(error)))
    for index, reason in report.skipped:
        logger.warning("%s: record %d skipped: %s", path, index, reason)
    if report.padded:
        logger.info(
            "%s: %d records had short table rows, padded with NULL (records %s)",
            path,
            len(report.padded),
            report.padded[:20],
        )
    return report
