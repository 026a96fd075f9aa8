"""Play the agent against a running AgentBench task server (controller) over HTTP.

Protocol: ``POST /api/start_sample {name, index}`` opens a session; each model
reply goes to ``POST /api/interact {session_id, agent_response: {status,
content}}``; both answer ``{session_id, output: {index, status, result,
history}}`` and the dialogue continues while ``status`` is ``running``.
Sessions are driven with ``run_episodes``, so one batched generation serves
every live sample per round.
"""

from __future__ import annotations

import json
import statistics
import urllib.error
import urllib.request
from typing import Any

from pydantic import Field, field_validator

from cycleqd_evaluators.agent_loop import Episode, run_episodes
from mergekit_cycleqd.evaluate import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    TaskResult,
    TaskServerError,
)

_RESULT_KEYS = ("result", "is_correct", "correct", "success")


class TaskServerOptions(EvaluatorOptions):
    """Options of the ``agentbench_server`` evaluator."""

    url: str = Field("http://127.0.0.1:5000", description="controller base URL")
    task: str = Field(description="task name the controller knows, e.g. os-std")
    indices: list[int] = Field(description="sample indices to run")
    repeats: int = Field(1, ge=1)
    max_rounds: int = Field(30, ge=1, description="safety cap; the server normally ends dialogues")
    max_new_tokens: int = Field(512, ge=1)
    concurrency: int = Field(8, ge=1)
    http_timeout_s: float = Field(600.0, gt=0)
    result_field: str | None = Field(None, description="key of output.result that holds success")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("indices")
    @classmethod
    def _some_indices(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 0:
            raise ValueError(
                f"indices must be a non-empty list of sample indices >= 0, got {value}"
            )
        return value


class TaskServerClient:
    """JSON over HTTP POST, with errors that name the endpoint."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{endpoint}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:500]
            raise TaskServerError(
                f"POST {self.url}{endpoint} -> HTTP {error.code}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            raise TaskServerError(f"POST {self.url}{endpoint} failed: {error}") from None
        except json.JSONDecodeError as error:
            raise TaskServerError(
                f"POST {self.url}{endpoint}: reply is not JSON ({error})"
            ) from None
        if not isinstance(reply, dict) or not isinstance(reply.get("output"), dict):
            raise TaskServerError(
                f"POST {self.url}{endpoint}: reply has no 'output' object: {reply!r:.300}"
            )
        return reply


def to_messages(history: list[dict[str, Any]]) -> list[Message]:
    """AgentBench history items (role user/agent) as chat messages (user/assistant)."""
    roles = {"user": "user", "agent": "assistant", "assistant": "assistant", "system": "system"}
    return [
        {"role": roles.get(str(h.get("role")), "user"), "content": str(h.get("content", ""))}
        for h in history
    ]


def is_success(result: Any, field: str | None) -> bool:
    """Read success from ``output.result``: a bool, or a dict's ``field`` / usual keys."""
    if isinstance(result, bool):
        return result
    if isinstance(result, dict):
        keys = (field,) if field else _RESULT_KEYS
        return any(result.get(k) is True for k in keys)
    return False


class TaskServerEpisode(Episode):
    """One sample's session on the server."""

    def __init__(
        self, client: TaskServerClient, task: str, index: int, repeat: int, field: str | None
    ):
        self.client, self.task, self.index, self.repeat, self.field = (
            client,
            task,
            index,
            repeat,
            field,
        )
        self.session_id: Any = None
        self.status = "not_started"
        self.result: Any = None
        self.error: str | None = None
        self.rounds = 0

    def _update(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        self.session_id = reply.get("session_id", self.session_id)
        output = reply["output"]
        self.status = str(output.get("status"))
        self.result = output.get("result")
        history = output.get("history") or []
        return history if isinstance(history, list) else []

    def start(self) -> list[Message]:
        history = self._update(
            self.client.post("/api/start_sample", {"name": self.task, "index": self.index})
        )
        messages = to_messages(history)
        if self.status != "running" or not messages:
            self.finished = True
        return messages or [{"role": "user", "content": ""}]

    def step(self, reply: str) -> str | None:
        if self.status != "running":
            return None
        self.rounds += 1
        try:
            history = self._update(
                self.client.post(
                    "/api/interact",
                    {
                        "session_id": self.session_id,
                        "agent_response": {"status": "normal", "content": reply},
                    },
                )
            )
        except TaskServerError as error:
            self.error, self.status = str(error), "client_error"
            return None
        if self.status != "running":
            return None
        # The next observation: every user turn after the last agent turn.
        tail: list[str] = []
        for item in reversed(history):
            if item.get("role") in ("agent", "assistant"):
                break
            tail.insert(0, str(item.get("content", "")))
        return "\n\n".join(tail)

    def on_round_limit(self) -> None:
        self.status = "round_limit"
        try:
            self.client.post("/api/cancel", {"session_id": self.session_id})
        except TaskServerError:
            pass

    @property
    def correct(self) -> bool:
        return self.status == "completed" and is_success(self.result, self.field)

    def sample(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "index": self.index,
            "repeat": self.repeat,
            "status": self.status,
            "correct": self.correct,
            "result": self.result,
            "rounds": self.rounds,
            "error": self.error,
        }


class TaskServerEvaluator(Evaluator):
    """Success rate on an AgentBench task served by a running controller."""

    Options = TaskServerOptions

    def __init__(self, options: TaskServerOptions):
        super().__init__(options)
        self.options: TaskServerOptions = options
        self.client = TaskServerClient(options.url, options.http_timeout_s)

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        o = self.options
        episodes = [
            TaskServerEpisode(self.client, o.task, index, repeat, o.result_field)
            for repeat in range(o.repeats)
            for index in o.indices
        ]
        run_episodes(
            backend,
            episodes,
            GenerationConfig(max_new_tokens=o.max_new_tokens),
            o.max_rounds,
            concurrency=o.concurrency,
            desc=f"agentbench:{o.task}",
        )
        accuracy = statistics.fmean(e.correct for e in episodes)
        metrics = {
            "accuracy": accuracy,
            "completed_rate": statistics.fmean(e.status == "completed" for e in episodes),
        }
        return TaskResult(score=accuracy, metrics=metrics, samples=[e.sample() for e in episodes])
