"""AgentBench OS interaction: a model operates a throw-away Linux system through bash.

Per task: a fresh sandbox (``mergekit_cycleqd.evaluate.isolation``), the task's ``create.init``
scripts and ``start`` command, then up to ``max_rounds`` replies in which the
model runs shell commands (``Act: bash``), answers (``Act: answer(...)``) or
declares a change done (``Act: finish``); the answer is judged by
``mergekit_cycleqd.evaluate.agentbench.os_checks``. Dialogues are batched across tasks with
``run_episodes`` so the model always generates for every live task at once.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mergekit_cycleqd.evaluate.agent_loop import Episode, run_episodes
from mergekit_cycleqd.evaluate.agentbench.os_checks import BUILTIN_CHECKS, Verdict, judge
from mergekit_cycleqd.evaluate.agentbench.os_tasks import OSTask, load_tasks
from mergekit_cycleqd.evaluate.base import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    TaskResult,
)
from mergekit_cycleqd.evaluate.isolation import Sandbox, SandboxBackend, SandboxError, SandboxLimits

log = logging.getLogger(__name__)

INSTRUCTIONS = """You are operating a Linux computer (Ubuntu-like) as root through a bash shell.
Solve the problem below by running commands. Every reply holds exactly ONE action, in one of
these three forms:

To run commands:
Think: <brief reasoning>
Act: bash
```bash
<commands>
```

To give the final answer to a question:
Think: <brief reasoning>
Act: answer(<only the answer itself>)

To finish a task that asked you to change the system:
Think: <brief reasoning>
Act: finish

After each command you get its output (at most {limit} characters). Commands must not wait
for input and may run at most {timeout:g} seconds. You have at most {rounds} replies.

Problem: {description}"""

_ACT = re.compile(r"Act:\s*(bash|answer|finish)\b", re.IGNORECASE)
_CODE = re.compile(r"```[ \t]*(?:bash|sh|shell)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def parse_action(reply: str) -> tuple[str, str | None] | None:
    """("bash", code), ("answer", text), ("finish", None), or None when no valid action."""
    found = _ACT.search(reply)
    if not found:
        return None
    kind = found.group(1).lower()
    rest = reply[found.end() :]
    if kind == "finish":
        return "finish", None
    if kind == "bash":
        code = _CODE.search(rest)
        return ("bash", code.group(1).strip()) if code and code.group(1).strip() else None
    if not rest.lstrip().startswith("("):
        return None
    text = rest.lstrip()[1:]
    depth = 0
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                return "answer", text[:position]
            depth -= 1
    closing = text.rfind(")")
    return "answer", text[:closing] if closing != -1 else text


def format_observation(output: str, limit: int, timed_out: bool, timeout: float, exited: bool) -> str:
    """What the model sees after a command (cut to ``limit`` characters)."""
    output = output.rstrip("\n")
    if len(output) > limit:
        output = output[:limit] + "\n[output cut: it was longer than the limit]"
    notes = []
    if timed_out:
        notes.append(f"[the command ran longer than {timeout:g} s and was killed; a new shell was started]")
    if exited:
        notes.append("[the shell exited; a new shell was started]")
    body = f"The output of the OS:\n\n{output}" if output.strip() else "The output of the OS is empty."
    return "\n".join([body, *notes])


class OSInteractionOptions(EvaluatorOptions):
    """Options of the ``os_interaction`` evaluator (see docs/evaluators-os.md)."""

    data: str = Field(description="a task JSON file or a folder of them (AgentBench format)")
    scripts_dir: str | None = Field(None, description="folder the tasks' script files are relative to")
    builtin_checks: bool = True
    limit: int | None = Field(None, ge=1)
    repeats: int = Field(1, ge=1)
    max_rounds: int = Field(5, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    command_timeout_s: float = Field(30.0, gt=0)
    output_limit: int = Field(800, ge=1)
    concurrency: int = Field(8, ge=1)
    max_live_sandboxes: int = Field(32, ge=1)
    sandbox: Literal["auto", "bwrap", "docker"] = "auto"
    rootfs: str = "/"
    docker_images: dict[str, str] = Field(default_factory=dict)
    memory_mb: int = Field(1024, ge=64)
    pids_limit: int = Field(512, ge=16)
    disk_mb: int = Field(1024, ge=16)
    reference_in_fresh_sandbox: bool = False

    @field_validator("data")
    @classmethod
    def _data_exists(cls, value: str) -> str:
        if not Path(value).exists():
            raise ValueError(f"task data {value!r} does not exist")
        return value


def make_sandbox_backend(options: OSInteractionOptions) -> SandboxBackend:
    """The sandbox backend the options ask for; ``auto`` prefers Docker when a daemon answers."""
    from mergekit_cycleqd.evaluate.isolation.bwrap import BwrapBackend
    from mergekit_cycleqd.evaluate.isolation.docker import DockerBackend, docker_available

    limits = SandboxLimits(options.memory_mb, options.pids_limit, options.disk_mb)
    kind = options.sandbox
    if kind == "auto":
        kind = "docker" if docker_available() else "bwrap"
    if kind == "docker":
        return DockerBackend(options.docker_images, limits)
    return BwrapBackend(options.rootfs, limits)


class OSEpisode(Episode):
    """One task in one sandbox, judged when the model answers or finishes."""

    def __init__(self, task: OSTask, repeat: int, launch: Callable[[str], Sandbox], options: OSInteractionOptions):
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
        prompt = INSTRUCTIONS.format(
            limit=self.options.output_limit, timeout=self.options.command_timeout_s,
            rounds=self.options.max_rounds, description=self.task.description,
        )
        return [{"role": "user", "content": prompt}]

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
            exited = result.shell_exited
            output = result.output
            if exited and output.endswith("\n"):
                output = output[:-1]
            observation = format_observation(
                output, self.options.output_limit, result.timed_out,
                self.options.command_timeout_s, exited,
            )
            self.transcript.append({"role": "user", "content": observation})
            return observation
        self.answer = payload
        self.status = "completed"
        self.verdict = judge(self.task, payload, self.sandbox, self._reference, self.options.command_timeout_s)
        return None

    def _reference(self) -> str | None:
        """The reference solution's output: in this sandbox (AgentBench) or a fresh one."""
        example = self.task.example
        assert example is not None and self.sandbox is not None
        timeout = self.options.command_timeout_s
        if not self.options.reference_in_fresh_sandbox:
            result = self.sandbox.run(example.code, (), example.language, timeout)
            return None if result.exit_code is None else result.output
        with self.launch(self.task.image) as fresh:
            if self._prepare(fresh):
                return None
            result = fresh.run(example.code, (), example.language, timeout)
            return None if result.exit_code is None else result.output

    def on_round_limit(self) -> None:
        self.status = "round_limit"
        self.verdict = Verdict(False, f"no answer within {self.options.max_rounds} rounds")

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def sample(self) -> dict[str, Any]:
        return {
            "task": self.task.task_id, "repeat": self.repeat, "status": self.status,
            "answer": self.answer, "correct": self.verdict.correct, "detail": self.verdict.detail,
            "rounds": self.rounds, "transcript": self.transcript,
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
            for repeat in range(self.options.repeats)
            for task in self.tasks
        ]
        config = GenerationConfig(max_new_tokens=self.options.max_new_tokens)
        step = self.options.max_live_sandboxes
        for first in range(0, len(episodes), step):
            run_episodes(
                backend, episodes[first : first + step], config, self.options.max_rounds,
                concurrency=self.options.concurrency, desc="os_interaction",
            )
        per_repeat = [
            statistics.fmean(e.verdict.correct for e in episodes if e.repeat == r)
            for r in range(self.options.repeats)
        ]
        accuracy = statistics.fmean(per_repeat) if per_repeat else 0.0
        metrics = {"accuracy": accuracy, "n_tasks": float(len(self.tasks))}
        if len(per_repeat) > 1:
            metrics["accuracy_stdev"] = statistics.stdev(per_repeat)
        return TaskResult(score=accuracy, metrics=metrics, samples=[e.sample() for e in episodes])
