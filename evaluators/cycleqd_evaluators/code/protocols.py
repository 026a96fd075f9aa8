"""How a coding problem is asked and how the code is taken from the reply, by protocol name.

- ``default`` (this project's): a chat turn with the task text and its first test, the
  backend applies the model's chat template; the code is the first Python (or untagged)
  fenced block of the reply, else the whole reply.
- ``cycleqd`` (the CycleQD reference code's MBPP+ setup, read from SakanaAI/CycleQD and its
  ``fishfarm`` evalplus task): a raw prompt in the Magicoder instruction format, a system
  line, then ``@@ Instruction:`` with the task text followed by "Your code should satisfy
  the following assertion:" and the assertion in a python fence, then ``@@ Response:``
  prefilled with an opening python fence; generation stops at the next instruction or
  response marker; the completion is cut at its first closing fence and passed through
  evalplus's sanitiser (``evalplus.sanitize.sanitize`` with the problem's entry point)
  before it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cycleqd_evaluators.code.data import Problem, require_evalplus
from cycleqd_evaluators.code.judge import split_assert
from mergekit_cycleqd.evaluate import Message, Prompt

ProtocolName = Literal["default", "cycleqd"]

INSTRUCTION = (
    "Solve the following Python programming problem.\n\n"
    "{text}\n\n"
    "Your function must have the name and signature used in this test, which it has to pass:\n"
    "{test}\n\n"
    "Answer with the complete Python code (imports included) in one ```python code block."
)

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function.\n\n```python\n{prompt}\n```\n\n"
    "Answer with the complete Python code (imports included) in one ```python code block."
)

CYCLEQD_SYSTEM = (
    "You are an exceptionally intelligent coding assistant that consistently delivers "
    "accurate and reliable responses to user instructions."
)
CYCLEQD_INSTRUCTION = (
    "{text} Your code should satisfy the following assertion:\n```python\n{test}\n```"
)
CYCLEQD_HUMANEVAL = "Write a solution to the following problem:\n```python\n{prompt}\n```"
CYCLEQD_PREFILL = "```python"
CYCLEQD_STOP = ("Instruction:", "Instruction", "Response:", "Response")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Protocol:
    """Prompt, stop strings and code extraction of one named protocol."""

    name: ProtocolName
    system_prompt: str | None = None

    @property
    def stop(self) -> tuple[str, ...]:
        return CYCLEQD_STOP if self.name == "cycleqd" else ()

    def prompt(self, problem: Problem) -> Prompt:
        if self.name == "cycleqd":
            return cycleqd_prompt(problem, system_prompt=self.system_prompt)
        return default_prompt(problem, system_prompt=self.system_prompt)

    def code(self, reply: str, problem: Problem) -> str:
        if self.name == "cycleqd":
            return cycleqd_code(reply, problem)
        return extract_code(reply)


def default_prompt(problem: Problem, *, system_prompt: str | None = None) -> list[Message]:
    """The chat conversation for one problem (the backend applies the chat template)."""
    if problem.is_humaneval:
        user = HUMANEVAL_INSTRUCTION.format(prompt=problem.prompt.strip())
    else:
        user = INSTRUCTION.format(text=problem.text, test=problem.first_test)
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user})
    return messages


def cycleqd_prompt(problem: Problem, *, system_prompt: str | None = None) -> str:
    """The reference code's raw prompt, ending in the prefilled opening fence.

    HumanEval+ (the reference code's mapping): the stub is the instruction and is also
    prefilled after the fence, so the model continues the function body.
    """
    if problem.is_humaneval:
        stub = problem.prompt.strip()
        instruction = CYCLEQD_HUMANEVAL.format(prompt=stub)
        prefill = f"{CYCLEQD_PREFILL}\n{stub}"
    else:
        text = problem.text if problem.text.endswith(".") else problem.text + "."
        instruction = CYCLEQD_INSTRUCTION.format(text=text, test=problem.first_test)
        prefill = CYCLEQD_PREFILL
    system = (system_prompt or CYCLEQD_SYSTEM).strip()
    return f"{system}\n\n@@ Instruction:\n{instruction.strip()}\n\n@@ Response:\n{prefill}\n"


def extract_code(reply: str) -> str:
    """The code in a reply: the first Python (or untagged) fenced block, else the reply.

    An unterminated fence (generation cut by the token limit) counts up to the end.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    for lang, body in blocks:
        if lang in ("python", "py", "python3", ""):
            return body
    if blocks:
        return blocks[0][1]
    return reply


def cycleqd_code(completion: str, problem: Problem) -> str:
    """The completion up to its first closing fence, sanitised by evalplus."""
    index = completion.find("```")
    body = completion if index == -1 else completion[:index]
    if problem.is_humaneval:
        body = problem.prompt.strip() + "\n" + body
    require_evalplus("protocol: cycleqd sanitises code with evalplus")
    from evalplus.sanitize import sanitize

    return sanitize(body, problem.entry_point or _entry_point(problem))


def _entry_point(problem: Problem) -> str | None:
    """The first function the first test calls (original MBPP records name no entry point)."""
    calls = split_assert(problem.first_test).calls if problem.first_test else ()
    return calls[0].split("(", 1)[0] if calls else None
