"""AgentBench DBBench: multi-turn SQL agent tasks, judged as AgentBench judges them.

Each task is one dialogue over a fresh database holding the task's table. The
agent either runs SQL (``Action: Operation`` and a ```sql block; it sees the
result rows) or ends (``Action: Answer`` and ``Final Answer: [...]``). Query
tasks are right when the final answer equals the gold answer (as numbers when
both are numeric, as sets for several values); INSERT/UPDATE tasks are right
when the table's fingerprint after the dialogue equals ``answer_md5``. The
score, ``overall_cat_accuracy``, is the mean of the SELECT-kind, INSERT and
UPDATE accuracies. All dialogues advance together (mergekit_cycleqd.evaluate.agent_loop), so
the model generates for every open task in one batch per round.
"""

from __future__ import annotations

import ast
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mergekit_cycleqd.evaluate.agent_loop import Episode, run_episodes
from mergekit_cycleqd.evaluate.agentbench.db_backends import (
    DatabaseBackend,
    MySQLBackend,
    SQLiteBackend,
    TaskDatabase,
    quote_identifier,
)
from mergekit_cycleqd.evaluate.agentbench.dbbench_tasks import (
    DBTask,
    load_dbbench,
)
from mergekit_cycleqd.evaluate.base import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    TaskResult,
)
from mergekit_cycleqd.evaluate.id_selection import IdSpec, expand_ids

INSTRUCTION = """\
You are an agent that works with a SQL database to solve one task. In each reply, \
think briefly if you like, then end with exactly one action.

To run a single SQL statement, end with:
Action: Operation
```sql
SELECT ...;
```
The next message will show the rows the statement returned, or its error.

To finish, end with:
Action: Answer
Final Answer: ["value 1", "value 2"]
For a question, the final answer is a Python-style list of the values that answer it, \
copied from query results. For a task that changes the table (INSERT, UPDATE, DELETE), \
make the change with an operation first, then finish with any answer, e.g. Final Answer: [].

You may reply at most {max_rounds} times. Quote table and column names with backticks.

The table is {table_name}; its columns (all of type TEXT) are: {columns}.

Task: {description}"""

_ACTION = re.compile(r"Action:\s*(Operation|Answer)\b", re.IGNORECASE)
_SQL_BLOCK = re.compile(r"```[ \t]*(\w*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_FINAL = re.compile(r"Final Answer:\s*(.*)", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")












def build_opening(task: DBTask, max_rounds: int, system_prompt: str | None) -> list[Message]:
    user = INSTRUCTION.format(
        max_rounds=max_rounds,
        table_name=quote_identifier(task.table.name),
        columns=", ".join(quote_identifier(c) for c in task.table.columns),
        description=task.description.strip(),
    )
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user})
    return messages


# ----------------------------------------------------------------- judging


def parse_final_answer(text: str) -> list[Any]:
    """The values of ``Final Answer: ...``: a literal list (flattened) or one raw value.

    Parsed with ``ast.literal_eval`` only: the text is model output.
    """
    text = text.strip()
    for candidate in (text, text.splitlines()[0].strip() if text else ""):
        try:
            value = ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return _flatten(value)
    return [text]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set)):
        return [item for inner in value for item in _flatten(inner)]
    return [value]


def _normalise(value: Any) -> Any:
    """Numbers (and numeric text) compare as floats; None as the label text 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    return float(text) if _NUMBER.fullmatch(text) else text


def answers_match(answer: list[Any], label: tuple[Any, ...] | list[Any]) -> bool:
    """One value each: equal as numbers (tolerance 1e-6) or as text; else equal as sets."""
    got = [_normalise(v) for v in answer]
    want = [_normalise(v) for v in label]
    if len(got) == 1 and len(want) == 1:
        a, b = got[0], want[0]
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
        return a == b
    return set(got) == set(want)


# ----------------------------------------------------------------- episodes


class DBBenchEpisode(Episode):
    """The database side of one DBBench dialogue."""

    def __init__(
        self,
        task: DBTask,
        backend: DatabaseBackend,
        max_rounds: int,
        max_observation_chars: int,
        system_prompt: str | None = None,
    ):
        self.task = task
        self.backend = backend
        self.max_rounds = max_rounds
        self.max_observation_chars = max_observation_chars
        self.system_prompt = system_prompt
        self.database: TaskDatabase | None = None
        self.replies: list[str] = []
        self.answer: str | None = None
        self.status = "running"
        self.fingerprint: str | None = None
        self.correct = False

    def start(self) -> list[Message]:
        self.database = self.backend.create(self.task.table)
        return build_opening(self.task, self.max_rounds, self.system_prompt)

    def step(self, reply: str) -> str | None:
        self.replies.append(reply)
        action = _ACTION.search(reply)
        if action is None:
            return self._finish("invalid_format")
        if action.group(1).lower() == "answer":
            final = _FINAL.search(reply, action.end())
            self.answer = final.group(1).strip() if final else ""
            return self._finish("answered")
        sql = _extract_sql(reply[action.end() :])
        if sql is None:
            return "Error: no SQL found. Put one statement in a ```sql code block after Action: Operation."
        return self._observe(sql)

    def _observe(self, sql: str) -> str:
        outcome = self.database.execute(sql)
        if outcome.error is not None:
            text = f"Error: {outcome.error}"
        elif outcome.rows:
            text = str(outcome.rows)
        else:
            text = "[] (no rows)"
        if len(text) > self.max_observation_chars:
            text = text[: self.max_observation_chars] + " ... (truncated)"
        return text

    def on_round_limit(self) -> None:
        self._finish("round_limit")

    def _finish(self, status: str) -> None:
        """Judge the dialogue (before close drops the database); always returns None."""
        self.status = status
        if self.task.category == "SELECT":
            self.correct = self.answer is not None and answers_match(
                parse_final_answer(self.answer), self.task.label
            )
        else:
            self.fingerprint = self.database.fingerprint(self.task.table)
            self.correct = self.fingerprint is not None and self.fingerprint == self.task.answer_md5

    def close(self) -> None:
        if self.database is not None:
            self.database.close()
            self.database = None

    def sample(self) -> dict[str, Any]:
        return {
            "index": self.task.index,
            "type": self.task.kind,
            "status": self.status,
            "answer": self.answer,
            "label": list(self.task.label) if self.task.category == "SELECT" else None,
            "fingerprint": self.fingerprint,
            "answer_md5": self.task.answer_md5,
            "correct": self.correct,
            "replies": self.replies,
        }


def _extract_sql(text: str) -> str | None:
    """The first ```sql block (or the first fenced block of any language)."""
    blocks = _SQL_BLOCK.findall(text)
    for lang, body in blocks:
        if lang.lower() in ("sql", "mysql", "sqlite"):
            return body.strip() or None
    if not blocks:
        return None
    return blocks[0][1].strip() or None


def score_episodes(episodes: list[DBBenchEpisode]) -> TaskResult:
    """Accuracy per category and per type; the score is overall_cat_accuracy."""
    by_category: dict[str, list[bool]] = defaultdict(list)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for episode in episodes:
        by_category[episode.task.category].append(episode.correct)
        by_type[episode.task.kind].append(episode.correct)
    metrics: dict[str, float] = {}
    for category, results in sorted(by_category.items()):
        metrics[f"{category.lower()}_accuracy"] = sum(results) / len(results)
    for kind, results in sorted(by_type.items()):
        metrics[f"type_accuracy/{kind}"] = sum(results) / len(results)
    category_scores = [sum(r) / len(r) for r in by_category.values()]
    overall = sum(category_scores) / len(category_scores) if category_scores else 0.0
    metrics["overall_cat_accuracy"] = overall
    correct = sum(e.correct for e in episodes)
    metrics["accuracy"] = correct / len(episodes) if episodes else 0.0
    return TaskResult(score=overall, metrics=metrics, samples=[e.sample() for e in episodes])


# ----------------------------------------------------------------- options


class SQLiteOptions(EvaluatorOptions):
    """Embedded SQLite (no server): one in-memory database per task."""

    kind: Literal["sqlite"] = "sqlite"


class MySQLOptions(EvaluatorOptions):
    """A MySQL/MariaDB server; the account needs CREATE, DROP, CREATE USER and GRANT OPTION."""

    kind: Literal["mysql"]
    host: str = "127.0.0.1"
    port: int = Field(3306, gt=0, lt=65536)
    user: str = "root"
    password: str = ""
    password_env: str | None = Field(
        None, description="read the password from this environment variable instead"
    )
    prefix: str = Field(
        "cqd_", pattern=r"^[A-Za-z0-9_]{1,20}$", description="per-task database/user names"
    )
    connect_timeout_s: float = Field(10.0, gt=0)


class DBBenchOptions(EvaluatorOptions):
    """Recipe options of the ``dbbench`` evaluator."""

    path: Path = Field(description="AgentBench DBBench JSONL (e.g. data/dbbench/dev.jsonl)")
    indices: list[IdSpec] | None = Field(
        None, description="0-based task indices and 'a-b' ranges; default: every task"
    )
    max_rounds: int = Field(5, gt=0, description="agent replies per task")
    max_new_tokens: int = Field(512, gt=0)
    max_observation_chars: int = Field(800, gt=0, description="query results are cut here")
    query_timeout_s: float = Field(10.0, gt=0, description="time limit per SQL statement")
    concurrency: int = Field(8, gt=0, description="database steps run at the same time")
    system_prompt: str | None = None
    database: SQLiteOptions | MySQLOptions = Field(
        default_factory=SQLiteOptions, discriminator="kind"
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"DBBench file {str(value)!r} does not exist or is not a file")
        return value


class DBBenchEvaluator(Evaluator):
    """DBBench on SQLite or MySQL/MariaDB; ``score`` is overall_cat_accuracy."""

    Options = DBBenchOptions

    def __init__(self, options: DBBenchOptions):
        super().__init__(options)
        self.options: DBBenchOptions = options
        tasks = load_dbbench(options.path)
        if options.indices is None:
            self.tasks = tasks
        else:
            indices = expand_ids(options.indices, "indices")
            bad = [i for i in indices if not 0 <= i < len(tasks)]
            if bad:
                raise ValueError(
                    f"indices: {bad[:10]} out of range for {options.path} ({len(tasks)} tasks)"
                )
            self.tasks = [tasks[i] for i in indices]

    def open_database(self) -> DatabaseBackend:
        """A database backend for one evaluation (closed by the caller)."""
        db = self.options.database
        if isinstance(db, SQLiteOptions):
            return SQLiteBackend(query_timeout_s=self.options.query_timeout_s)
        password = db.password
        if db.password_env is not None:
            if db.password_env not in os.environ:
                raise ValueError(f"database.password_env: ${db.password_env} is not set")
            password = os.environ[db.password_env]
        return MySQLBackend(
            db.host,
            db.port,
            db.user,
            password,
            query_timeout_s=self.options.query_timeout_s,
            prefix=db.prefix,
            connect_timeout_s=db.connect_timeout_s,
        )

    def make_episodes(self, database: DatabaseBackend) -> list[DBBenchEpisode]:
        return [
            DBBenchEpisode(
                task,
                database,
                self.options.max_rounds,
                self.options.max_observation_chars,
                self.options.system_prompt,
            )
            for task in self.tasks
        ]

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.options.max_new_tokens)

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        database = self.open_database()
        try:
            episodes = self.make_episodes(database)
            run_episodes(
                backend,
                episodes,
                self.generation_config(),
                max_rounds=self.options.max_rounds,
                concurrency=self.options.concurrency,
                desc="dbbench",
            )
        finally:
            database.close()
        return score_episodes(episodes)
