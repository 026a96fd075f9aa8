"""AgentBench OS interaction: a model operates a throw-away Linux system through bash.

Per task: a fresh sandbox (``cycleqd_evaluators.isolation``), the task's ``create.init``
scripts and ``start`` command, then replies under AgentBench's protocol
(``os_protocol``: 8 rounds by default, ``protocol: cycleqd`` for the paper's 5 rounds
and 5 repeats) in which the model runs shell commands (``Act: bash``), answers
(``Act: answer(...)``) or declares a change done (``Act: finish``); the answer is
judged by ``os_checks`` in a judge shell the agent cannot have tampered with. Dialogues are batched across tasks with
``run_episodes`` so the model always generates for every live task at once.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cycleqd_evaluators.agent_loop import Episode, run_episodes
from cycleqd_evaluators.agentbench.os_checks import BUILTIN_CHECKS, Verdict, judge
from cycleqd_evaluators.agentbench.os_protocol import (
    OUTPUT_LIMIT,
    PROTOCOLS,
    Protocol,
    format_observation,
    opening,
    parse_action,
)
from cycleqd_evaluators.agentbench.os_tasks import OSTask, load_tasks
from cycleqd_evaluators.isolation import Sandbox, SandboxBackend, SandboxError, SandboxLimits
from mergekit_cycleqd.evaluate import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    TaskResult,
)

log = logging.getLogger(__name__)


class OSInteractionOptions(EvaluatorOptions):
    """Options of the ``os_interaction`` evaluator (see docs/evaluators-os.md)."""

    data: str = Field(description="a task JSON file or a folder of them (AgentBench format)")
    scripts_dir: str | None = Field(
        None, description="folder the tasks' script files are relative to"
    )
    builtin_checks: bool = True
    limit: int | None = Field(None, ge=1)
    protocol: Protocol = Field(
        "agentbench", description="agentbench (8 rounds, 1 run) or cycleqd (5, 5)"
    )
    repeats: int | None = Field(None, ge=1, description="runs per task (default: the protocol's)")
    max_rounds: int | None = Field(
        None, ge=1, description="model replies per task (default: the protocol's)"
    )
    max_new_tokens: int = Field(512, ge=1)
    command_timeout_s: float = Field(30.0, gt=0)
    output_limit: int = Field(OUTPUT_LIMIT, ge=1)
    concurrency: int = Field(8, ge=1)
    max_live_sandboxes: int = Field(32, ge=1)
    sandbox: Literal["auto", "bwrap", "docker"] = "auto"
    rootfs: str = Field(
        "packages",
        description="bwrap base root: 'packages' (built from Debian packages "
        "and cached), or the folder of an existing root ('/' shows the host's system dirs)",
    )
    extra_packages: list[str] = Field(default_factory=list, description="added to the built root")
    docker_images: dict[str, str] = Field(default_factory=dict)
    memory_mb: int = Field(1024, ge=64)
    pids_limit: int = Field(512, ge=16)
    disk_mb: int = Field(1024, ge=16)
    reference_in_fresh_sandbox: bool = False

    @property
    def rounds(self) -> int:
        return self.max_rounds or PROTOCOLS[self.protocol].max_rounds

    @property
    def runs(self) -> int:
        return self.repeats or PROTOCOLS[self.protocol].repeats

    @field_validator("data")
    @classmethod
    def _data_exists(cls, value: str) -> str:
        if not Path(value).exists():
            raise ValueError(f"task data {value!r} does not exist")
        return value


def make_sandbox_backend(options: OSInteractionOptions) -> SandboxBackend:
    """The sandbox backend the options ask for; ``auto`` prefers Docker when a daemon answers."""
    from cycleqd_evaluators.isolation.bwrap import BwrapBackend
    from cycleqd_evaluators.isolation.docker import DockerBackend, docker_available

    limits = SandboxLimits(options.memory_mb, options.pids_limit, options.disk_mb)
    kind = options.sandbox
    if kind == "auto":
        kind = "docker" if docker_available() else "bwrap"
    if kind == "docker":
        return DockerBackend(options.docker_images, limits)
    if options.rootfs == "packages":
        from cycleqd_evaluators.isolation.rootfs import PACKAGES, ensure_rootfs

        return BwrapBackend(ensure_rootfs((*PACKAGES, *options.extra_packages)), limits)
    return BwrapBackend(options.rootfs, limits)


class OSEpisode(Episode):
    """One task in one sandbox, judged when the model answers or finishes."""

    def __init__(
        self,
        task: OSTask,
        repeat: int,
        launch: Callable[[str], Sandbox],
        options: OSInteractionOptions,
    ):
        self.task, self.repeat, self.launch, self.options = task, repeat, launch, options
        self.sandbox: Sandbox | None = None
        self.status = "running"
        self.answer: str | None = None
        self.verdict = Verdict(False, "not judged")
        self.rounds = 0
        self.transcript: list[dict[str, str]] = []

    def _prepare(self, sandbox: Sandbox) -> str | None:
        """Run init scripts and the start command; returns an error message or None."""
        timeout = self.options.command_timeout_s
        for script in self.task.init:
            result = sandbox.run(script.code, (), script.language, timeout)
            if result.exit_code is None:
                return f"init script ({script.origin}) did not finish: {result.output[-300:]!r}"
        if self.task.start:
            if sandbox.start_background(self.task.start, timeout).exit_code is None:
                return "start command did not run"
        return None

    def start(self) -> list[Message]:
        try:
            self.sandbox = self.launch(self.task.image)
            problem = self._prepare(self.sandbox)
        except SandboxError as error:
            problem = str(error)
        if problem:
            self.status = "environment_error"
            self.verdict = Verdict(False, problem)
        return opening(self.task.description)

    def step(self, reply: str) -> str | None:
        self.rounds += 1
        self.transcript.append({"role": "assistant", "content": reply})
        if self.status != "running" or self.sandbox is None:
            return None
        action = parse_action(reply)
        if action is None:
            self.status = "invalid_action"
            self.verdict = Verdict(False, "the reply holds no valid action")
            return None
        kind, payload = action
        if kind == "bash":
            assert payload is not None
            try:
                result = self.sandbox.shell(payload, self.options.command_timeout_s)
            except SandboxError as error:
                self.status = "environment_error"
                self.verdict = Verdict(False, str(error))
                return None
            observation = format_observation(
                result.output,
                timed_out=result.timed_out,
                timeout=self.options.command_timeout_s,
                exited=result.shell_exited,
                limit=self.options.output_limit,
            )
            self.transcript.append({"role": "user", "content": observation})
            return observation
        self.answer = payload
        self.status = "completed"
        self.verdict = judge(
            self.task, payload, self.sandbox, self._reference, self.options.command_timeout_s
        )
        return None

    def _reference(self) -> str | None:
        """The reference solution's output: in this sandbox (AgentBench) or a fresh one."""
        example = self.task.example
        assert example is not None and self.sandbox is not None
        timeout = self.options.command_timeout_s
        if not self.options.reference_in_fresh_sandbox:
            result = self.sandbox.judge(example.code, (), example.language, timeout)
            return None if result.exit_code is None else result.output
        with self.launch(self.task.image) as fresh:
            if self._prepare(fresh):
                return None
            result = fresh.judge(example.code, (), example.language, timeout)
            return None if result.exit_code is None else result.output

    def on_round_limit(self) -> None:
        self.status = "round_limit"
        self.verdict = Verdict(False, f"no answer within {self.options.rounds} rounds")

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def sample(self) -> dict[str, Any]:
        return {
            "task": self.task.task_id,
            "repeat": self.repeat,
            "status": self.status,
            "answer": self.answer,
            "correct": self.verdict.correct,
            "detail": self.verdict.detail,
            "rounds": self.rounds,
            "transcript": self.transcript,
        }


class OSInteractionEvaluator(Evaluator):
    """Accuracy on AgentBench OS-interaction tasks (mean over tasks and repeats)."""

    Options = OSInteractionOptions

    def __init__(self, options: OSInteractionOptions):
        super().__init__(options)
        self.options: OSInteractionOptions = options
        tasks = load_tasks(
            options.data,
            options.scripts_dir,
            BUILTIN_CHECKS if options.builtin_checks else frozenset(),
        )
        self.tasks = tasks[: options.limit] if options.limit else tasks
        self._sandboxes: SandboxBackend | None = None

    def sandbox_backend(self) -> SandboxBackend:
        if self._sandboxes is None:
            self._sandboxes = make_sandbox_backend(self.options)
        return self._sandboxes

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        sandboxes = self.sandbox_backend()
        episodes = [
            OSEpisode(task, repeat, sandboxes.launch, self.options)
            for repeat in range(self.options.runs)
            for task in self.tasks
        ]
        config = GenerationConfig(max_new_tokens=self.options.max_new_tokens)
        step = self.options.max_live_sandboxes
        for first in range(0, len(episodes), step):
            run_episodes(
                backend,
                episodes[first : first + step],
                config,
                self.options.rounds,
                concurrency=self.options.concurrency,
                desc="os_interaction",
            )
        per_repeat = [
            statistics.fmean(e.verdict.correct for e in episodes if e.repeat == r)
            for r in range(self.options.runs)
        ]
        accuracy = statistics.fmean(per_repeat) if per_repeat else 0.0
        metrics = {"accuracy": accuracy, "n_tasks": float(len(self.tasks))}
        if len(per_repeat) > 1:
            metrics["accuracy_stdev"] = statistics.stdev(per_repeat)
        return TaskResult(score=accuracy, metrics=metrics, samples=[e.sample() for e in episodes])
