"""DBBench task records (AgentBench's JSONL format) loaded into typed, validated tasks."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_cycleqd.evaluate.agentbench.db_backends import (
    TableSpec,
)

MUTATIONS = ("INSERT", "UPDATE", "DELETE")

@dataclass(frozen=True)
class DBTask:
    """One DBBench row, with its table made loadable on MySQL and SQLite alike."""

    index: int
    description: str
    kind: str
    label: tuple[Any, ...]
    answer_md5: str | None
    table: TableSpec
    gold_sql: str | None = None

    @property
    def category(self) -> str:
        """INSERT, UPDATE, DELETE, or SELECT for every query kind."""
        return self.kind if self.kind in MUTATIONS else "SELECT"

def _column_names(raw: list[str]) -> tuple[str, ...]:
    """MySQL rejects empty names and names ending in spaces: name them by position."""
    names: list[str] = []
    for position, name in enumerate(raw, 1):
        name = str(name).rstrip() or f"column_{position}"
        candidate, copy = name, 2
        while candidate.lower() in (n.lower() for n in names):
            candidate, copy = f"{name}_{copy}", copy + 1
        names.append(candidate)
    return tuple(names)

def parse_task(row: dict[str, Any], index: int, where: str) -> DBTask:
    """Validate one JSONL row; errors name the file, line and field."""
    try:
        kind = row["type"][0]
        table = row["table"]
        info = table["table_info"]
        columns = _column_names([c["name"] for c in info["columns"]])
        rows = tuple(tuple(r) for r in info["rows"])
        description = str(row["description"])
        label = tuple(row.get("label") or ())
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"{where}: missing or malformed field {error}") from None
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"{where}: table.table_info.rows do not all have {len(columns)} values")
    answer_md5 = None
    gold_sql = (row.get("sql") or {}).get("query") if isinstance(row.get("sql"), dict) else None
    if kind in MUTATIONS:
        answer_md5 = _parse_md5(row.get("answer_md5"), where)
        gold_sql = str(label[0]) if label else None
    table_spec = TableSpec(str(table["table_name"]), columns, rows)
    return DBTask(index, description, kind, label, answer_md5, table_spec, gold_sql)

def _parse_md5(value: Any, where: str) -> str | None:
    """``answer_md5`` is the text of a MySQL result, e.g. "[('0a1b...',)]"."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field answer_md5 is missing (needed for a {value!r} task)")
    try:
        parsed = ast.literal_eval(value)
        return parsed[0][0]
    except (ValueError, SyntaxError, IndexError, TypeError):
        raise ValueError(f"{where}: field answer_md5 = {value!r} is not a hash result") from None

def load_dbbench(path: Path) -> list[DBTask]:
    tasks = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            tasks.append(parse_task(row, len(tasks), where))
    return tasks
