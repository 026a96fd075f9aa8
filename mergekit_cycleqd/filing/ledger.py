"""The run ledger: one SQLite file that is the single source of truth of a run.

Every child (seed, evolved child, final model, baseline) gets one row, written
together with its scores in a single transaction, so a crash can never leave a
child half-filed. Archives are *derived* by replaying the ledger (archive.py),
which is what makes resume after SIGKILL exact.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_cycleqd.errors import LedgerError

BACKUP_NAME = "ledger.backup.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS children (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    role TEXT NOT NULL,
    name TEXT,
    active_task TEXT,
    parents TEXT NOT NULL DEFAULT '[]',
    weights TEXT NOT NULL DEFAULT '[]',
    mutation_seed INTEGER,
    model_path TEXT,
    status TEXT NOT NULL,
    error TEXT,
    merge_s REAL,
    eval_s REAL,
    file_s REAL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    child_id INTEGER NOT NULL REFERENCES children(id),
    task TEXT NOT NULL,
    split TEXT NOT NULL,
    score REAL NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    samples_path TEXT,
    PRIMARY KEY (child_id, task, split)
);
CREATE INDEX IF NOT EXISTS children_role ON children(role, generation);
"""


@dataclass
class ScoreRow:
    """One task score of one child, as written to the ledger."""

    task: str
    split: str
    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    samples_path: str | None = None


@dataclass
class ChildRecord:
    """A ledger row with its scores decoded."""

    id: int
    generation: int
    role: str
    name: str | None
    active_task: str | None
    parents: list[int]
    weights: list[float]
    mutation_seed: int | None
    model_path: str | None
    status: str
    error: str | None
    merge_s: float | None
    eval_s: float | None
    file_s: float | None
    created_at: float
    scores: dict[str, float] = field(default_factory=dict)
    test_scores: dict[str, float] = field(default_factory=dict)
    validation_scores: dict[str, float] = field(default_factory=dict)

    def split_scores(self, split: str) -> dict[str, float]:
        """The scores of one split: "opt", "validation", anything else is the test split."""
        return {"opt": self.scores, "validation": self.validation_scores}.get(
            split, self.test_scores
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_COLUMNS = (
    "id, generation, role, name, active_task, parents, weights, mutation_seed, model_path, "
    "status, error, merge_s, eval_s, file_s, created_at"
)


class Ledger:
    """Read/write access to a run's ledger file.

    ``read_only=None`` opens read-only when the folder is not writable (an archived
    run): WAL mode would need to create files beside the ledger, so such a folder is
    opened immutable instead. An empty or damaged file is refused with a message that
    says how to recover, never silently recreated.
    """

    def __init__(self, path: Path, *, read_only: bool | None = None):
        self.path = Path(path)
        existed = self.path.exists()
        if read_only is None:
            read_only = existed and not os.access(self.path.parent, os.W_OK)
        self.read_only = read_only
        if existed and self.path.stat().st_size == 0:
            raise LedgerError(
                f"{self.path} is empty (0 bytes): the run's results are gone from it. "
                + _recovery_hint(self.path)
            )
        if not existed and read_only:
            raise LedgerError(f"{self.path} does not exist; is this a run folder?")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as error:
            raise LedgerError(
                f"{self.path} is damaged ({error}). " + _recovery_hint(self.path)
            ) from None

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            wal = self.path.with_name(self.path.name + "-wal")
            # immutable: no -shm/-wal files are created; only sound without a pending WAL
            flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
            db = sqlite3.connect(f"{self.path.absolute().as_uri()}?{flags}", uri=True)
        else:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            if not self.read_only:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
        except sqlite3.OperationalError as error:  # locked, unreadable: not damage
            db.close()
            raise LedgerError(f"cannot open {self.path}: {error}") from None
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def backup_into(self, target: sqlite3.Connection) -> None:
        self._db.backup(target)

    def backup(self, destination: Path) -> Path:
        """A consistent copy through SQLite's online backup API, renamed into place whole."""
        destination = Path(destination)
        temporary = destination.with_name(destination.name + ".tmp")
        temporary.unlink(missing_ok=True)
        target = sqlite3.connect(temporary)
        try:
            self.backup_into(target)
            (verdict,) = target.execute("PRAGMA quick_check").fetchone()
        finally:
            target.close()
        if verdict != "ok":  # never replace a good backup by a copy of damage
            temporary.unlink()
            raise LedgerError(
                f"{self.path} fails SQLite's check ({verdict}); backup kept as it was"
            )
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
        fsync_dir(destination.parent)
        return destination

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- meta -------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # ---- children ---------------------------------------------------------
    def add_child(
        self,
        *,
        generation: int,
        role: str,
        status: str,
        scores: Iterable[ScoreRow] = (),
        child_id: int | None = None,
        name: str | None = None,
        active_task: str | None = None,
        parents: Iterable[int] = (),
        weights: Iterable[float] = (),
        mutation_seed: int | None = None,
        model_path: str | None = None,
        error: str | None = None,
        merge_s: float | None = None,
        eval_s: float | None = None,
        file_s: float | None = None,
    ) -> int:
        """Insert a child and its scores atomically; returns its id."""
        with self._transaction():
            cursor = self._db.execute(
                f"INSERT INTO children({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    child_id,
                    generation,
                    role,
                    name,
                    active_task,
                    json.dumps(list(parents)),
                    json.dumps([float(w) for w in weights]),
                    mutation_seed,
                    model_path,
                    status,
                    error,
                    merge_s,
                    eval_s,
                    file_s,
                    time.time(),
                ),
            )
            new_id = int(cursor.lastrowid)
            self._insert_scores(new_id, scores)
        return new_id

    def add_scores(self, child_id: int, scores: Iterable[ScoreRow]) -> None:
        """Add (or replace) scores of an existing child, e.g. its test split."""
        with self._transaction():
            self._insert_scores(child_id, scores)

    def set_file_time(self, child_id: int, file_s: float) -> None:
        self._db.execute("UPDATE children SET file_s=? WHERE id=?", (file_s, child_id))

    def _insert_scores(self, child_id: int, scores: Iterable[ScoreRow]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO scores(child_id, task, split, score, metrics, samples_path) "
            "VALUES (?,?,?,?,?,?)",
            [
                (child_id, s.task, s.split, float(s.score), json.dumps(s.metrics), s.samples_path)
                for s in scores
            ],
        )

    def children(self, role: str | None = None, status: str | None = "ok") -> list[ChildRecord]:
        """Children in id (filing) order, optionally filtered by role and status."""
        clauses, params = [], []
        if role is not None:
            clauses.append("role = ?")
            params.append(role)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM children {where} ORDER BY id", params)
        records = [self._record(row) for row in rows]
        by_id = {r.id: r for r in records}
        if by_id:
            for child_id, task, split, score in self._db.execute(
                "SELECT child_id, task, split, score FROM scores"
            ):
                record = by_id.get(child_id)
                if record is not None:
                    record.split_scores(split)[task] = score
        return records

    def child(self, child_id: int) -> ChildRecord:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM children WHERE id = ?", (child_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no child with id {child_id} in {self.path}")
        record = self._record(row)
        for task, split, score in self._db.execute(
            "SELECT task, split, score FROM scores WHERE child_id = ?", (child_id,)
        ):
            record.split_scores(split)[task] = score
        return record

    def count(self, role: str | None = None) -> int:
        if role is None:
            return self._db.execute("SELECT COUNT(*) FROM children").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM children WHERE role=?", (role,)).fetchone()[0]

    def max_generation(self) -> int:
        value = self._db.execute(
            "SELECT MAX(generation) FROM children WHERE role = 'child'"
        ).fetchone()[0]
        return int(value) if value is not None else 0

    def metrics(self, child_id: int, task: str, split: str = "opt") -> dict[str, float]:
        row = self._db.execute(
            "SELECT metrics FROM scores WHERE child_id=? AND task=? AND split=?",
            (child_id, task, split),
        ).fetchone()
        return json.loads(row[0]) if row else {}

    @staticmethod
    def _record(row: tuple) -> ChildRecord:
        values = list(row)
        values[5] = json.loads(values[5])
        values[6] = json.loads(values[6])
        return ChildRecord(*values)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recovery_hint(path: Path) -> str:
    backup = path.with_name(BACKUP_NAME)
    if backup.exists():
        return (
            f"Restore the last consistent copy ({backup.name}) with: "
            f"mergekit-cycleqd recover {path.parent} (it keeps the damaged file beside it), "
            f"then continue with --resume."
        )
    return f"No backup ({backup.name}) exists; start a fresh run folder."


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, error: BaseException | None, _tb: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.OperationalError as failure:
            error = error or failure
            if not exc_type and self.db.in_transaction:
                self.db.execute("ROLLBACK")
        if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
            raise LedgerError(
                f"cannot file into {self.path}: the disk is full ({error}). Free space, then "
                f"continue with --resume; everything filed before is intact."
            ) from None
        if error is not None and not exc_type:
            raise error
