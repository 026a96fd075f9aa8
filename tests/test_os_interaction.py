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

from cycleqd_evaluators.agentbench.os_protocol import (
    INSTRUCTIONS,
    NEW_PROBLEM,
    TRUNCATED,
    format_observation,
    opening,
    parse_action,
)
from mergekit_cycleqd.evaluate import build_evaluator
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from tests.conftest import require_tool

pytestmark = pytest.mark.timeout(300)

# Hand-written, timing-free solutions of the `match` tasks: read the background program's
# own command line (its sleep interval, the file it writes) instead of watching the clock.
INTERVAL = "ps -eo args | grep -o 'time.sleep([0-9]*)' | head -n 1 | tr -dc 0-9"
CHANGED_FILE = (
    "for p in $(pgrep -x python3); do tr '\\0' ' ' < /proc/$p/cmdline; done "
    '| grep -o \'open("[^"]*"\' | head -n 1 | sed \'s/open("//; s/"$//\' | xargs basename'
)
CALC = (
    'printf \'#!/bin/bash\\npython3 -c "print(eval(\\\\"$*\\\\"))"\\n\' > /usr/local/bin/calc && '
    "chmod +x /usr/local/bin/calc && calc '2 * (9 / 3)'"
)
MATCH_SOLUTIONS = {
    0: INTERVAL,
    4: INTERVAL,
    1: CHANGED_FILE,
    2: CHANGED_FILE,
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
    return next(
        m["content"][len(NEW_PROBLEM) :]
        for m in conversation
        if m["content"].startswith(NEW_PROBLEM)
    )


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
            "scripts_dir": str(scripts),
            "sandbox": "bwrap",
            "concurrency": 8,
            "command_timeout_s": 20,
            **options,
        },
    )


@pytest.mark.slow
def test_every_dev_task_solved_by_its_reference_scores_100(
    shared_data, stock_scripts, packaged_rootfs
):
    require_root_sandbox()
    tasks = dev_tasks(shared_data)
    assert len(tasks) == 26
    result = evaluator(shared_data, stock_scripts).evaluate(ScriptedBackend(gold_agent(tasks)))
    failures = [
        (s["task"], s["status"], s["detail"], s["transcript"])
        for s in result.samples
        if not s["correct"]
    ]
    assert failures == []
    assert result.score == 1.0 and result.metrics["accuracy"] == 1.0
    assert len(result.samples) == 26


@pytest.mark.slow
def test_wrong_answers_score_zero(shared_data, stock_scripts, packaged_rootfs):
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


# --- Tasks the tests write themselves, in AgentBench's OS JSON format -----------------------
# Each has a hand-written correct answer (known without running anything) and a near miss.

FIXTURE_TASKS = [
    {
        "description": "How many .txt files are in /root/docs?",
        "create": {
            "local": "default",
            "init": {
                "code": "mkdir -p /root/docs && touch /root/docs/a.txt "
                "/root/docs/b.txt /root/docs/c.txt /root/docs/d.md"
            },
        },
        "evaluation": {"match": "3"},
        "labels": ["file"],
    },
    {
        "description": "How many lines does /root/data.txt have?",
        "create": {"local": "default", "init": "seq 1 37 > /root/data.txt"},
        "evaluation": {
            "check": [None, {"language": "python", "file": "check/integer-match.py"}],
            "example": "wc -l < /root/data.txt",
        },
        "labels": ["file"],
    },
    {
        "description": "Which user owns /root/secret?",
        "create": {
            "local": "default",
            "init": {"code": "useradd alice && touch /root/secret && chown alice /root/secret"},
        },
        "evaluation": {
            "check": [None, {"language": "python", "file": "check/string-match.py"}],
            "example": {"code": "stat -c %U /root/secret"},
        },
        "labels": ["user"],
    },
    {
        "description": "Create a user named bob with a home directory.",
        "evaluation": {"check": {"code": "id bob && test -d /home/bob"}},
        "labels": ["user"],
    },
]
ANSWERS = [
    # (commands of round 1 or None, final action): correct, then near miss
    ((None, "answer(3)"), (None, "answer(4)")),
    ((None, "answer(37)"), (None, "answer(36)")),
    ((None, "answer(alice)"), (None, "answer(root)")),
    (("useradd -m bob", "finish"), ("useradd bob", "finish")),
]


def fixture_data(tmp_path: Path, tasks: list[dict]) -> Path:
    path = tmp_path / "os_fixture.json"
    path.write_text(json.dumps(tasks))
    return path


def scripted(plan: dict[str, tuple[str | None, str]]):
    """An agent that runs its commands (if any) in round 1, then takes its final action."""

    def respond(conversation: list[dict]) -> str:
        commands, final = plan[description_of(conversation)]
        if commands is not None and conversation[-1]["content"].startswith(NEW_PROBLEM):
            return f"Think: do it.\n\nAct: bash\n\n```bash\n{commands}\n```"
        return f"Think: done.\n\nAct: {final}"

    return respond


@pytest.fixture(scope="session")
def packaged_rootfs() -> Path:
    """The default OS sandbox root, built from packages once (cached across sessions)."""
    require_root_sandbox()
    os.environ.setdefault("CYCLEQD_ROOTFS_CACHE", "/var/tmp/cycleqd-test-rootfs")
    from cycleqd_evaluators.isolation.rootfs import PACKAGES, cache_root, rootfs_key

    if not (
        cache_root()
        / f"{rootfs_key(PACKAGES, 'bookworm', 'http://deb.debian.org/debian')}.complete"
    ).exists():
        require_tool("mmdebstrap")
    from cycleqd_evaluators.isolation.rootfs import ensure_rootfs

    return ensure_rootfs()


def fixture_evaluator(tmp_path: Path, tasks: list[dict], **options):
    return build_evaluator(
        "os_interaction",
        {
            "data": str(fixture_data(tmp_path, tasks)),
            "sandbox": "bwrap",
            "command_timeout_s": 20,
            **options,
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["correct", "near_miss"])
def test_fixture_tasks_score_hand_written_answers(tmp_path, packaged_rootfs, which):
    plan = {t["description"]: ANSWERS[i][which] for i, t in enumerate(FIXTURE_TASKS)}
    result = fixture_evaluator(tmp_path, FIXTURE_TASKS).evaluate(ScriptedBackend(scripted(plan)))
    assert [s["correct"] for s in result.samples] == [which == 0] * len(FIXTURE_TASKS), (
        result.samples
    )
    assert result.score == (1.0 if which == 0 else 0.0)


FORGERIES = (
    # tools the judge might call, planted earlier on PATH or over the originals
    "for d in /usr/local/sbin /usr/local/bin; do for t in wc stat timeout bash python3 getent tail; do "
    "printf '#!/bin/sh\\necho {fake}\\n' > $d/$t; chmod +x $d/$t; done; done; "
    "for t in wc stat; do printf '#!/bin/sh\\necho {fake}\\n' > /usr/bin/$t; done; "
    "printf 'alias wc=\"echo {fake}\"\\n' >> /root/.bashrc; ln -sf /usr/local/bin/wc /etc/alternatives/awk"
)
SABOTAGE = (
    # files a judge running in the agent's layer would load: they break it instead of forging
    "; rm -f /bin/sh; printf '#!/bin/bash\\necho 0\\n' > /bin/sh; chmod +x /bin/sh; "
    "echo /root/evil.so > /etc/ld.so.preload; rm -f /bin; ln -s /root /bin"
)


@pytest.mark.slow
def test_an_agent_that_plants_its_own_tools_cannot_pass(tmp_path, packaged_rootfs):
    tasks = FIXTURE_TASKS[1:3]  # judged by the reference solution's output (wc, stat)
    fakes = {tasks[0]["description"]: "5", tasks[1]["description"]: "root"}
    plan = {d: (FORGERIES.replace("{fake}", fake), f"answer({fake})") for d, fake in fakes.items()}
    result = fixture_evaluator(tmp_path, tasks).evaluate(ScriptedBackend(scripted(plan)))
    assert [s["correct"] for s in result.samples] == [False, False], result.samples
    # the judge saw the true values, not the planted ones
    assert "'37'" in result.samples[0]["detail"] and "'alice'" in result.samples[1]["detail"]
    # and a correct answer still passes when the agent has planted the same tools
    honest = {
        d: (FORGERIES.replace("{fake}", fake) + SABOTAGE, f"answer({right})")
        for (d, fake), right in zip(fakes.items(), ("37", "alice"), strict=True)
    }
    again = fixture_evaluator(tmp_path, tasks).evaluate(ScriptedBackend(scripted(honest)))
    assert [s["correct"] for s in again.samples] == [True, True], again.samples


LATE_OUTPUT_TASK = {
    "description": "How many files are in /root/box?",
    "create": {
        "local": "default",
        "init": {
            "code": (
                "( while [ ! -e /tmp/go ]; do sleep 0.05; done; echo LATE; touch /tmp/done ) & "
                "mkdir /root/box && touch /root/box/x /root/box/y"
            )
        },
    },
    "evaluation": {
        "check": [None, {"language": "python", "file": "check/integer-match.py"}],
        "example": "ls /root/box | wc -l",
    },
}
COUNT_TASKS = [
    {
        "description": "How many processes are running? Do not count the header of ps.",
        "evaluation": {
            "check": [None, {"language": "python", "file": "check/integer-match.py"}],
            # no pipeline: a pipeline's members are forked while ps reads /proc, so
            # what ps sees depends on scheduling (in AgentBench's container too)
            "example": "ps -A --no-headers > /tmp/ps.txt; wc -l < /tmp/ps.txt",
        },
    },
    {
        "description": "How many bash processes are running?",
        "evaluation": {
            "check": [None, {"language": "python", "file": "check/integer-match.py"}],
            "example": "pgrep -c -x bash",
        },
    },
]


@pytest.mark.slow
def test_late_init_output_and_process_counts(tmp_path, packaged_rootfs):
    tasks = [LATE_OUTPUT_TASK, *COUNT_TASKS]
    commands = {
        # the init script's background job prints only after this command ran: no timing
        tasks[0][
            "description"
        ]: "touch /tmp/go; while [ ! -e /tmp/done ]; do sleep 0.05; done; ls /root/box | wc -l",
        tasks[1]["description"]: COUNT_TASKS[0]["evaluation"]["example"],
        tasks[2]["description"]: COUNT_TASKS[1]["evaluation"]["example"],
    }

    def agent(conversation):
        description = description_of(conversation)
        if conversation[-1]["content"].startswith(NEW_PROBLEM):
            return f"Act: bash\n\n```bash\n{commands[description]}\n```"
        return f"Act: answer({output_of(conversation[-1]['content']).strip()})"

    result = fixture_evaluator(tmp_path, tasks).evaluate(ScriptedBackend(agent))
    assert [s["correct"] for s in result.samples] == [True, True, True], result.samples
    answers = [s["answer"] for s in result.samples]
    # deterministic: the sandbox's init, the agent shell's wrapper and the shell itself
    assert answers[0] == "2" and answers[2] == "3"


# --- AgentBench's protocol, one test per rule (see docs/evaluators-os.md) --------------------


def test_the_last_act_line_is_the_action():
    assert parse_action("Act: bash\n```bash\nls\n```\nThink: no.\nAct: answer(5)") == (
        "answer",
        "5",
    )
    assert parse_action("Act: answer(1)\nAct: finish") == ("finish", None)
    assert parse_action("Act: finish\nAct: bash\n```bash\nls -l\n```") == ("bash", "ls -l")


def test_an_answer_line_without_parentheses_is_skipped():
    assert parse_action("Act: answer(3)\nAct: answer 4") == ("answer", "3")
    assert parse_action("Act: answer 4") is None
    assert parse_action("I think the answer is 3") is None
    assert parse_action("Act: dance") is None


def test_the_answer_runs_from_the_first_to_the_last_parenthesis():
    assert parse_action("Act: answer(f(x) = 3) done") == ("answer", "f(x) = 3")
    assert parse_action("Act: answer( 42 )") == ("answer", " 42 ")


def test_a_bash_action_runs_every_bash_block_of_the_reply():
    reply = "```bash\ncd /etc\n```\nthen\n```bash\nls\n```\nAct: bash"
    assert parse_action(reply) == ("bash", "cd /etc\n\nls")
    assert parse_action("Act: bash\nls") == ("bash", "")  # no block: an empty command, as upstream


def test_long_output_is_cut_to_780_characters_and_a_note():
    assert format_observation("x" * 801) == "The output of the OS:\n\n" + "x" * 780 + TRUNCATED
    assert format_observation("x" * 800) == "The output of the OS:\n\n" + "x" * 800
    assert format_observation("\n") == "The output of the OS is empty."
    assert "killed" in format_observation("", timed_out=True, timeout=30)


def test_the_opening_is_instruction_one_shot_then_the_task():
    messages = opening("Count the users.")
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert (
        messages[0]["content"].startswith(INSTRUCTIONS)
        and "Now, my problem is:\n\n" in messages[0]["content"]
    )
    assert parse_action(messages[1]["content"])[0] == "bash" and TRUNCATED in messages[2]["content"]
    assert parse_action(messages[5]["content"]) == ("answer", "48")
    assert messages[-1]["content"] == NEW_PROBLEM + "Count the users."


@pytest.mark.parametrize(
    ("protocol", "rounds", "repeats"), [("agentbench", 8, 1), ("cycleqd", 5, 5)]
)
def test_protocol_sets_round_limit_and_repeats(tmp_path, protocol, rounds, repeats):
    ev = build_evaluator(
        "os_interaction", {"data": str(fixture_data(tmp_path, FIXTURE_TASKS)), "protocol": protocol}
    )
    assert (ev.options.rounds, ev.options.runs, ev.options.command_timeout_s) == (
        rounds,
        repeats,
        30.0,
    )
    explicit = build_evaluator(
        "os_interaction",
        {
            "data": str(fixture_data(tmp_path, FIXTURE_TASKS)),
            "protocol": protocol,
            "max_rounds": 2,
            "repeats": 3,
        },
    )
    assert (explicit.options.rounds, explicit.options.runs) == (2, 3)


@pytest.mark.slow
def test_round_limit_and_command_time_limit_hold(tmp_path, packaged_rootfs):
    import time

    task = [FIXTURE_TASKS[0]]
    busy = fixture_evaluator(tmp_path, task)
    result = busy.evaluate(ScriptedBackend(lambda c: "Act: bash\n```bash\ntrue\n```"))
    assert result.samples[0]["status"] == "round_limit" and result.samples[0]["rounds"] == 8
    stuck = fixture_evaluator(tmp_path, task, command_timeout_s=2, max_rounds=1)
    start = time.monotonic()
    result = stuck.evaluate(ScriptedBackend(lambda c: "Act: bash\n```bash\nsleep 1000\n```"))
    assert "killed" in result.samples[0]["transcript"][-1]["content"]
    assert time.monotonic() - start < 60  # 2 s, plus sandbox start and teardown; never the 1000 s
