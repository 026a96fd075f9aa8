"""The dialogue rules of AgentBench's OS-interaction task, written from its documented behaviour.

Each rule names its source so results can be set beside AgentBench's and the CycleQD paper's:

* opening: an instruction turn that describes the three actions, a one-shot example
  dialogue, then the task ("a new problem in a new OS") -- AgentBench ``os_interaction``;
* the action is taken from the LAST ``Act:`` line of a reply that starts with ``bash``,
  ``finish`` or ``answer(...)`` (an ``answer`` line without both parentheses is skipped);
  the answer is the text between the line's first ``(`` and its last ``)``; a bash action
  runs every ```` ```bash ```` block of the reply, joined by a blank line -- AgentBench;
* observations are ``The output of the OS:`` plus the output, or ``The output of the OS is
  empty.``; output longer than 800 characters is cut to its first 780 plus a truncation
  note -- AgentBench;
* round limits: AgentBench allows 8 replies, one run per task; the CycleQD reference
  code allows 5 and averages OS quality over 5 repeats (``protocol: cycleqd``).

The wording of the instruction and of the one-shot example is this project's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Protocol = Literal["agentbench", "cycleqd"]


@dataclass(frozen=True)
class ProtocolSettings:
    """Defaults a protocol sets; explicit evaluator options override them."""

    max_rounds: int
    repeats: int


PROTOCOLS: dict[str, ProtocolSettings] = {
    "agentbench": ProtocolSettings(max_rounds=8, repeats=1),
    "cycleqd": ProtocolSettings(max_rounds=5, repeats=5),
}

OUTPUT_LIMIT = 800
KEEP_WHEN_CUT = 780
TRUNCATED = "\n[truncated because the output is too long]"

INSTRUCTIONS = """You will act as a person using a computer; I play the Linux (Ubuntu) operating \
system you type into. Your job is to carry out what I ask or to answer my question. In each \
turn, first think about what to do, then take exactly one of three actions: "bash", "finish" \
or "answer".

1. To run bash code, reply in this form:

Think: your reasoning.

Act: bash

```bash
# your bash code
```

2. When you have completed the operation I asked for, reply in this form:

Think: your reasoning.

Act: finish

3. When you know the answer to my question, reply in this form:

Think: your reasoning.

Act: answer(the answer goes inside these parentheses)

Long outputs are truncated, and a truncated output is incomplete: work around that \
yourself. Your bash code must never wait for input. Take exactly one action per turn.

"""

ONE_SHOT: tuple[tuple[str, str], ...] = (
    ("user", 'How many entries does the directory "/usr/share" hold?'),
    (
        "assistant",
        "Think: I will list the directory to see its entries.\n\nAct: bash\n\n"
        "```bash\nls /usr/share\n```",
    ),
    (
        "user",
        "The output of the OS:\n\nbase-files bash-completion ca-certificates common-licenses "
        "debconf dict doc info locale man perl5 pixmaps" + TRUNCATED,
    ),
    (
        "assistant",
        "Think: The listing was truncated, so I will let the shell count the entries.\n\n"
        "Act: bash\n\n```bash\nls -1 /usr/share | wc -l\n```",
    ),
    ("user", "The output of the OS:\n\n48"),
    ("assistant", "Think: The directory holds 48 entries.\n\nAct: answer(48)"),
)

NEW_PROBLEM = "Now, I will start a new problem in a new OS. My problem is:\n\n"


def opening(description: str) -> list[dict[str, str]]:
    """The conversation the model first sees: instruction, one-shot example, the task."""
    first, *rest = ONE_SHOT
    messages = [{"role": "user", "content": INSTRUCTIONS + "Now, my problem is:\n\n" + first[1]}]
    messages += [{"role": role, "content": content} for role, content in rest]
    messages.append({"role": "user", "content": NEW_PROBLEM + description})
    return messages


_ACT_LINE = re.compile(r"Act:\s*(.+)")
_BASH_BLOCK = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)


def parse_action(reply: str) -> tuple[str, str | None] | None:
    """("bash", code), ("answer", text), ("finish", None), or None when no valid action."""
    for line in reversed(_ACT_LINE.findall(reply)):
        action = line.lower()
        if action.startswith("bash"):
            return "bash", "\n\n".join(_BASH_BLOCK.findall(reply))
        if action.startswith("finish"):
            return "finish", None
        if action.startswith("answer"):
            content = line[len("answer") :].strip()
            left, right = content.find("("), content.rfind(")")
            if left != -1 and right != -1:
                return "answer", content[left + 1 : right]
    return None


def format_observation(
    output: str,
    *,
    timed_out: bool = False,
    timeout: float = 30.0,
    exited: bool = False,
    limit: int = OUTPUT_LIMIT,
) -> str:
    """What the model sees after a command; notes on a killed or exited shell are ours."""
    output = output.rstrip("\n")
    if len(output) > limit:
        output = output[: limit - (OUTPUT_LIMIT - KEEP_WHEN_CUT)] + TRUNCATED
    notes = []
    if timed_out:
        notes.append(
            f"[the command ran longer than {timeout:g} s and was killed; a new shell was started]"
        )
    if exited:
        notes.append("[the shell exited; a new shell was started]")
    body = f"The output of the OS:\n\n{output}" if output else "The output of the OS is empty."
    return "\n".join([body, *notes])
