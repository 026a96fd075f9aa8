"""OS-interaction evaluator on the real AgentBench dev tasks, with a scripted agent.

The scripted agent solves each task the way a good model would: it runs a
command, reads the sandbox's output from the conversation, and answers with
it. For `[null, checker]` tasks the command is the task's own reference
solution; for `match` tasks and the `calc` tasks our own solutions below.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mergekit_cycleqd.evaluate import build_evaluator
from mergekit_cycleqd.evaluate.agentbench.os_protocol import NEW_PROBLEM
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from tests.conftest import require_tool

pytestmark = pytest.mark.timeout(300)

# Hand-written, timing-free solutions of the `match` tasks: read the background program's
# own command line (its sleep interval, the file it writes) instead of watching the clock.
INTERVAL = "ps -eo args | grep -o 'time.sleep([0-9]*)' | head -n 1 | tr -dc 0-9"
CHANGED_FILE = (
    "for p in $(pgrep -x python3); do tr '\\0' ' ' < /proc/$p/cmdline; done "
    "| grep -o 'open(\"[^\"]*\"' | head -n 1 | sed 's/open(\"//; s/\"$//' | xargs basename"
)
CALC = (
    "printf '#!/bin/bash\\npython3 -c \"print(eval(\\\\\"$*\\\\\"))\"\\n' > /usr/local/bin/calc && "
    "chmod +x /usr/local/bin/calc && calc '2 * (9 / 3)'"
)
MATCH_SOLUTIONS = {
    0: INTERVAL, 4: INTERVAL, 1: CHANGED_FILE, 2: CHANGED_FILE,
    24: "su - jack -c 'chmod 777 test && ~/test'",
}
STOCK_LOG = """#!/bin/bash
# Our own stand-in for AgentBench's init/stock-log.sh: a random trading log.
names=(Alice Bob Carol Dave)
actions=(Buy Sell)
for i in $(seq 1 300); do
  echo "${names[RANDOM % 4]} | ${actions[RANDOM % 2]} | $((RANDOM % 50)) | $((RANDOM % 900 + 1))"
done > /usr/stock.log
"""


def require_root_sandbox() -> None:
    require_tool("bwrap")
    if os.geteuid() != 0:
        message = "the bwrap OS sandbox needs root"
        if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
            pytest.fail(message + " (CYCLEQD_REQUIRE_ALL=1)")
        pytest.skip(message)


def output_of(observation: str) -> str:
    prefix = "The output of the OS:\n\n"
    return observation[len(prefix) :] if observation.startswith(prefix) else ""


def dev_tasks(shared_data: Path) -> list[dict]:
    return json.loads((shared_data / "agentbench/os_interaction/data/dev.json").read_text())


def solution(index: int, task: dict) -> str:
    if index in MATCH_SOLUTIONS:
        return MATCH_SOLUTIONS[index]
    if "calc" in task["description"]:
        return CALC
    example = task["evaluation"]["example"]
    return example["code"] if isinstance(example, dict) else example


def description_of(conversation: list[dict]) -> str:
    """The task, as the protocol's opening states it (after the one-shot example)."""
    return next(m["content"][len(NEW_PROBLEM):] for m in conversation if m["content"].startswith(NEW_PROBLEM))


def gold_agent(tasks: list[dict], wrong: bool = False):
    """Round 1: run the solution; round 2: answer with its output (or finish)."""
    by_description = {t["description"]: (i, t) for i, t in enumerate(tasks)}

    def respond(conversation: list[dict]) -> str:
        index, task = by_description[description_of(conversation)]
        if conversation[-1]["content"].startswith(NEW_PROBLEM):
            return f"Think: let me look.\n\nAct: bash\n\n```bash\n{solution(index, task)}\n```"
        if "calc" in task["description"]:
            return "Think: calc works.\n\nAct: finish"
        answer = output_of(conversation[-1]["content"]).strip()
        if wrong:
            answer = "no idea" if not answer.strip().lstrip("-").isdigit() else str(int(answer) + 7)
        return f"Think: that is it.\n\nAct: answer({answer})"

    return respond


@pytest.fixture(scope="module")
def stock_scripts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    (folder / "init").mkdir()
    (folder / "init/stock-log.sh").write_text(STOCK_LOG)
    return folder


def evaluator(shared_data: Path, scripts: Path, **options):
    return build_evaluator(
        "os_interaction",
        {
            "data": str(shared_data / "agentbench/os_interaction/data/dev.json"),
            "scripts_dir": str(scripts), "sandbox": "bwrap", "concurrency": 8,
            "command_timeout_s": 20, **options,
        },
    )


def test_every_dev_task_solved_by_its_reference_scores_100(shared_data, stock_scripts):
    require_root_sandbox()
    tasks = dev_tasks(shared_data)
    assert len(tasks) == 26
    result = evaluator(shared_data, stock_scripts).evaluate(ScriptedBackend(gold_agent(tasks)))
    failures = [(s["task"], s["status"], s["detail"], s["transcript"]) for s in result.samples if not s["correct"]]
    assert failures == []
    assert result.score == 1.0 and result.metrics["accuracy"] == 1.0
    assert len(result.samples) == 26


def test_wrong_answers_score_zero(shared_data, stock_scripts):
    require_root_sandbox()
    tasks = dev_tasks(shared_data)
    # the calc tasks judge the system, not an answer: leave them out here
    keep = [i for i, t in enumerate(tasks) if "calc" not in t["description"]]
    ev = evaluator(shared_data, stock_scripts)
    ev.tasks = [ev.tasks[i] for i in keep]
    result = ev.evaluate(ScriptedBackend(gold_agent(tasks, wrong=True)))
    assert [s["task"] for s in result.samples if s["correct"]] == []
    assert result.score == 0.0


def test_option_errors_name_the_field(shared_data, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_rounds"):
        build_evaluator("os_interaction", {"data": str(tmp_path), "max_rounds": 0})
    with pytest.raises(ValidationError, match="sandbx"):
        build_evaluator("os_interaction", {"data": str(tmp_path), "sandbx": "bwrap"})
    with pytest.raises(ValidationError, match="does not exist"):
        build_evaluator("os_interaction", {"data": str(tmp_path / "missing.json")})
    dev = shared_data / "agentbench/os_interaction/data/dev.json"
    with pytest.raises(ValueError, match=re.escape("task 25, field 'create.init[0]'")):
        build_evaluator("os_interaction", {"data": str(dev), "scripts_dir": str(tmp_path)})
