"""AgentBench DBBench: multi-turn SQL agent tasks, judged as AgentBench judges them.

Each task is one dialogue over a fresh database holding the task's table,
following the protocol in ``dbbench_protocol`` (AgentBench's by default, or the
CycleQD reference code's with ``protocol: cycleqd``). Query tasks are judged on
the final answer; INSERT/UPDATE tasks on the table's fingerprint after the
dialogue against ``answer_md5``. The score, ``overall_cat_accuracy``, is the
mean of the SELECT-bucket, INSERT and UPDATE accuracies, always over three (a
bucket without tasks counts 0, as in AgentBench). All dialogues advance
together (cycleqd_evaluators.agent_loop), so the model generates for
every open task in one batch per round.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cycleqd_evaluators.agent_loop import Episode, run_episodes
from cycleqd_evaluators.agentbench import dbbench_protocol as dbp
from cycleqd_evaluators.agentbench.db_backends import (
    DEFAULT_MAX_RESULT_BYTES,
    DatabaseBackend,
    TaskDatabase,
)
from cycleqd_evaluators.agentbench.dbbench_tasks import DBTask, load_dbbench
from cycleqd_evaluators.id_selection import IdSpec, expand_ids
from mergekit_cycleqd.evaluate import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    TaskResult,
)


def build_opening(task: DBTask, system_prompt: str | None = None) -> list[Message]:
    """The instruction, "Ok.", then the task (an optional system message first)."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(dbp.opening(task.description, task.add_description))
    return messages


# ----------------------------------------------------------------- episodes


class DBBenchEpisode(Episode):
    """The database side of one DBBench dialogue."""

    def __init__(
        self,
        task: DBTask,
        backend: DatabaseBackend,
        *,
        protocol_name: dbp.Protocol,
        max_operations: int,
        max_observation_chars: int,
        system_prompt: str | None = None,
    ):
        self.task = task
        self.backend = backend
        self.judge = dbp.JUDGES[protocol_name]
        self.max_operations = max_operations
        self.max_observation_chars = max_observation_chars
        self.system_prompt = system_prompt
        self.database: TaskDatabase | None = None
        self.operations = 0
        self.replies: list[str] = []
        self.observations: list[str] = []
        self.answer: str | None = None
        self.status = "running"
        self.fingerprint: str | None = None
        self.correct = False

    def start(self) -> list[Message]:
        self.database = self.backend.create(self.task.table)
        return build_opening(self.task, self.system_prompt)

    def step(self, reply: str) -> str | None:
        self.replies.append(reply)
        if dbp.wants_operation(reply) and self.operations < self.max_operations:
            sql = dbp.extract_sql(reply)
            if sql is None:
                return self._finish("invalid_format")
            self.operations += 1
            outcome = self.database.execute(sql)
            self.observations.append(
                dbp.observation(
                    outcome.rows,
                    outcome.error,
                    truncated=outcome.truncated,
                    max_chars=self.max_observation_chars,
                )
            )
            return self.observations[-1]
        self.answer = dbp.extract_answer(reply)
        if self.answer is not None:
            return self._finish("answered")
        return self._finish(
            "round_limit" if self.operations >= self.max_operations else "invalid_format"
        )

    def on_round_limit(self) -> None:
        self._finish("round_limit")

    def _finish(self, status: str) -> None:
        """Judge the dialogue (before close drops the database); always returns None."""
        self.status = status
        if self.task.category == "SELECT":
            self.correct = self.judge(self.answer, self.task.label)
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
            "operations": self.operations,
            "replies": self.replies,
            "observations": self.observations,
        }


def score_episodes(episodes: list[DBBenchEpisode], *, skipped: int = 0) -> TaskResult:
    """AgentBench's metrics; overall_cat_accuracy = (SELECT + INSERT + UPDATE) / 3.

    The SELECT bucket holds every type but INSERT and UPDATE (as in AgentBench);
    a bucket without tasks scores 0 and still counts in the mean.
    """
    buckets: dict[str, list[bool]] = {"SELECT": [], "INSERT": [], "UPDATE": []}
    by_type: dict[str, list[bool]] = defaultdict(list)
    for episode in episodes:
        kind = episode.task.kind
        buckets[kind if kind in ("INSERT", "UPDATE") else "SELECT"].append(episode.correct)
        by_type[kind].append(episode.correct)
    metrics: dict[str, float] = {}
    for bucket, results in buckets.items():
        metrics[f"{bucket.lower()}_accuracy"] = sum(results) / len(results) if results else 0.0
    for kind, results in sorted(by_type.items()):
        metrics[f"type_accuracy/{kind}"] = sum(results) / len(results)
    overall = sum(metrics[f"{b.lower()}_accuracy"] for b in buckets) / 3
    metrics["overall_cat_accuracy"] = overall
    correct = sum(e.correct for e in episodes)
    metrics["accuracy"] = correct / len(episodes) if episodes else 0.0
    metrics["records_skipped"] = float(skipped)
    return TaskResult(score=overall, metrics=metrics, samples=[e.sample() for e in episodes])


# ----------------------------------------------------------------- options


class SQLiteOptions(EvaluatorOptions):
    """Embedded SQLite (no server): one in-memory database per task."""

    kind: Literal["sqlite"] = "sqlite"


class MySQLOptions(EvaluatorOptions):
    """A MySQL/MariaDB server; the account needs CREATE, DROP, CREATE USER, GRANT OPTION and KILL rights."""

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
        None, description="0-based record positions in the file and 'a-b' ranges; default: all"
    )
    protocol: dbp.Protocol = Field(
        "agentbench",
        description="agentbench (AgentBench main) or cycleqd (its v0.2, as in the paper)",
    )
    max_rounds: int | None = Field(
        None,
        gt=0,
        description="SQL operations per task (AgentBench's max_round; the model then gets one "
        "more reply for its answer); default: 15 (agentbench) or 5 (cycleqd)",
    )
    max_new_tokens: int = Field(512, gt=0)
    max_observation_chars: int = Field(800, gt=0, description="observations are cut here")
    max_result_bytes: int = Field(
        DEFAULT_MAX_RESULT_BYTES, gt=0, description="bytes of result values read per statement"
    )
    query_timeout_s: float = Field(10.0, gt=0, description="time limit per SQL step")
    concurrency: int = Field(8, gt=0, description="database steps (and connections) at once")
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

    @property
    def operations(self) -> int:
        return self.max_rounds or dbp.MAX_OPERATIONS[self.protocol]


class DBBenchEvaluator(Evaluator):
    """DBBench on SQLite or MySQL/MariaDB; ``score`` is overall_cat_accuracy."""

    Options = DBBenchOptions

    def __init__(self, options: DBBenchOptions):
        super().__init__(options)
        self.options: DBBenchOptions = options
        self.report = load_dbbench(options.path)
        records = len(self.report.tasks) + len(self.report.skipped)
        by_index = {task.index: task for task in self.report.tasks}
        selected = (
            range(records) if options.indices is None else expand_ids(options.indices, "indices")
        )
        bad = [i for i in selected if not 0 <= i < records]
        if bad:
            raise ValueError(
                f"indices: {bad[:10]} out of range for {options.path} ({records} records)"
            )
        self.tasks = [by_index[i] for i in selected if i in by_index]
        self.skipped = [(i, why) for i, why in self.report.skipped if i in set(selected)]

    def open_database(self) -> DatabaseBackend:
        """A database backend for one evaluation (closed by the caller)."""
        o, db = self.options, self.options.database
        if isinstance(db, SQLiteOptions):
            from cycleqd_evaluators.agentbench.dbbench_sqlite import SQLiteBackend

            return SQLiteBackend(
                query_timeout_s=o.query_timeout_s, max_result_bytes=o.max_result_bytes
            )
        from cycleqd_evaluators.agentbench.dbbench_mysql import MySQLBackend

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
            query_timeout_s=o.query_timeout_s,
            prefix=db.prefix,
            connect_timeout_s=db.connect_timeout_s,
            max_result_bytes=o.max_result_bytes,
        )

    def make_episodes(self, database: DatabaseBackend) -> list[DBBenchEpisode]:
        o = self.options
        return [
            DBBenchEpisode(
                task,
                database,
                protocol_name=o.protocol,
                max_operations=o.operations,
                max_observation_chars=o.max_observation_chars,
                system_prompt=o.system_prompt,
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
                max_rounds=self.options.operations + 1,
                concurrency=self.options.concurrency,
                desc="dbbench",
            )
        finally:
            database.close()
        return score_episodes(episodes, skipped=len(self.skipped))
