"""The task-server adapter against a small in-test AgentBench-style controller."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from cycleqd_evaluators.agentbench.taskserver import TaskServerError, is_success
from mergekit_cycleqd.evaluate import build_evaluator
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend, prompt_key


class ToyController:
    """Two toy tasks: 'double' (one turn: reply 2*index) and 'knock' (three turns)."""

    def __init__(self):
        self.sessions: dict[int, dict] = {}
        self.lock = threading.Lock()
        self.calls: list[str] = []

    def start(self, name: str, index: int) -> dict:
        if name not in ("double", "knock"):
            raise KeyError(name)
        with self.lock:
            sid = len(self.sessions) + 1
            prompt = f"Reply with twice {index}." if name == "double" else "Knock knock."
            self.sessions[sid] = {
                "name": name,
                "index": index,
                "history": [{"role": "user", "content": prompt}],
            }
        return self.output(sid, "running", None)

    def output(self, sid: int, status: str, result) -> dict:
        s = self.sessions[sid]
        return {
            "session_id": sid,
            "output": {
                "index": s["index"],
                "status": status,
                "result": result,
                "history": list(s["history"]),
            },
        }

    def interact(self, sid: int, content: str) -> dict:
        s = self.sessions[sid]
        s["history"].append({"role": "agent", "content": content})
        if s["name"] == "double":
            return self.output(sid, "completed", {"result": content.strip() == str(2 * s["index"])})
        turns = sum(h["role"] == "agent" for h in s["history"])
        if turns == 1:
            ok = content.strip() == "Who's there?"
            if not ok:
                return self.output(sid, "agent invalid action", {"result": False})
            s["history"].append({"role": "user", "content": "Lettuce."})
            return self.output(sid, "running", None)
        return self.output(sid, "completed", {"result": content.strip() == "Lettuce who?"})


def serve(controller: ToyController):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            controller.calls.append(self.path)
            try:
                if self.path == "/api/start_sample":
                    reply = controller.start(body["name"], body["index"])
                elif self.path == "/api/interact":
                    reply = controller.interact(
                        body["session_id"], body["agent_response"]["content"]
                    )
                elif self.path == "/api/cancel":
                    reply = controller.output(body["session_id"], "cancelled", None)
                else:
                    self.send_error(404)
                    return
            except KeyError as error:
                self.send_error(400, f"unknown {error}")
                return
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def controller():
    toy = ToyController()
    server = serve(toy)
    toy.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield toy
    server.shutdown()


def doubler(prompt):
    text = prompt_key(prompt)
    return str(2 * int(text.split()[-1].rstrip("."))) if text.startswith("Reply") else "?"


def test_one_turn_task_scores_and_batches(controller):
    backend = ScriptedBackend(doubler)
    ev = build_evaluator(
        "agentbench_server", {"url": controller.url, "task": "double", "indices": [0, 1, 2, 3]}
    )
    result = ev.evaluate(backend)
    assert result.score == 1.0
    assert [s["index"] for s in result.samples] == [0, 1, 2, 3]
    assert backend.calls == 1  # all four samples in one batched generate
    assert controller.calls.count("/api/start_sample") == 4


def test_wrong_replies_score_zero(controller):
    ev = build_evaluator(
        "agentbench_server", {"url": controller.url, "task": "double", "indices": [1, 2]}
    )
    assert ev.evaluate(ScriptedBackend(lambda p: "5")).score == 0.0


def test_multi_turn_task_follows_the_history(controller):
    replies = {"Knock knock.": "Who's there?", "Lettuce.": "Lettuce who?"}
    ev = build_evaluator(
        "agentbench_server",
        {"url": controller.url, "task": "knock", "indices": [0, 1], "repeats": 2},
    )
    result = ev.evaluate(ScriptedBackend(replies, default="?"))
    assert result.score == 1.0 and len(result.samples) == 4
    assert all(s["rounds"] == 2 and s["status"] == "completed" for s in result.samples)
    bad = build_evaluator(
        "agentbench_server", {"url": controller.url, "task": "knock", "indices": [0]}
    )
    sample = bad.evaluate(ScriptedBackend(lambda p: "hello")).samples[0]
    assert (sample["status"], sample["correct"]) == ("agent invalid action", False)


def test_round_limit_cancels_the_session(controller):
    ev = build_evaluator(
        "agentbench_server",
        {"url": controller.url, "task": "knock", "indices": [0], "max_rounds": 1},
    )
    result = ev.evaluate(ScriptedBackend({"Knock knock.": "Who's there?"}))
    assert result.samples[0]["status"] == "round_limit" and result.score == 0.0
    assert "/api/cancel" in controller.calls


def test_server_errors_are_clear(controller):
    ev = build_evaluator(
        "agentbench_server", {"url": controller.url, "task": "nope", "indices": [0]}
    )
    with pytest.raises(TaskServerError, match=r"/api/start_sample -> HTTP 400"):
        ev.evaluate(ScriptedBackend(lambda p: ""))
    dead = build_evaluator(
        "agentbench_server", {"url": "http://127.0.0.1:9", "task": "x", "indices": [0]}
    )
    with pytest.raises(TaskServerError, match="127.0.0.1:9/api/start_sample failed"):
        dead.evaluate(ScriptedBackend(lambda p: ""))


def test_option_errors():
    with pytest.raises(ValidationError, match="url must start with http"):
        build_evaluator("agentbench_server", {"url": "localhost:5000", "task": "t", "indices": [0]})
    with pytest.raises(ValidationError, match="indices"):
        build_evaluator("agentbench_server", {"task": "t", "indices": []})
    with pytest.raises(ValidationError, match="task"):
        build_evaluator("agentbench_server", {"indices": [0]})
    with pytest.raises(ValidationError, match="max_round"):
        build_evaluator("agentbench_server", {"task": "t", "indices": [0], "max_round": 3})


def test_is_success():
    assert is_success(True, None) and not is_success(None, None)
    assert is_success({"is_correct": True}, None) and not is_success({"result": False}, None)
    assert is_success({"ok": True}, "ok") and not is_success({"result": True}, "ok")
