"""AgentBench's DBBench protocol: what the model is told, how replies are read, how answers are judged.

Two named protocols share the dialogue and differ in limits and judging:

- ``agentbench`` (default): AgentBench's main branch. Up to 15 SQL operations
  (``max_round`` in AgentBench's config); answers judged as its
  ``DBResultProcessor`` judges them.
- ``cycleqd``: the CycleQD reference code, which runs AgentBench v0.2: up to 5
  operations, exact comparison.

Dialogue (both, AgentBench v0.2's text protocol): the instruction (it names
MySQL), an assistant turn "Ok.", then ``description + "\\n" + add_description``.
A reply whose first ``Action: <name>`` line names ``Operation`` runs the first
```` ```sql ```` fence (lines joined with spaces; several statements allowed);
any other reply ends the dialogue, its answer being the rest of the line after
``\\nFinal Answer:``. After the last allowed operation the next reply is read
for its answer only. Observations are the rows as a Python list of tuples
(``[]`` when none), the database's raw error text, cut at 800 characters
with ``[TRUNCATED]`` appended.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Literal

Protocol = Literal["agentbench", "cycleqd"]
MAX_OPERATIONS: dict[str, int] = {"agentbench": 15, "cycleqd": 5}
TRUNCATED = "[TRUNCATED]"
FLOAT_TOLERANCE = 1e-2

# Written for this project from AgentBench's documented protocol; the model is told
# it works on MySQL, because AgentBench's gold SQL and its answers come from MySQL.
INSTRUCTION = """\
I will give you a question about a table in a MySQL database. Help me answer it \
by working with the database through SQL. Explain the problem and how you will \
solve it, and think it through before you act.
In every round, either run one SQL statement or give your final answer.
To run SQL, write exactly:
Action: Operation
```sql
SELECT * FROM `table` WHERE condition;
```
Put the SQL in that markdown block with nothing else in it, on one line. One \
statement per round: I run only the first sql block and show you what MySQL \
returns, as it returns it.
When you are sure of the answer, write exactly:
Action: Answer
Final Answer: ["ANSWER1", "ANSWER2", ...]
The answer must be exactly right. If the question asks you to change the \
database, make the change first; your final answer can then be anything.
A reply that matches neither form counts as a failure."""

_ACTION = re.compile(r"Action: (.*?)\n")
_SQL = re.compile(r"```sql\n([\s\S]*?)\n```")
_FINAL = re.compile(r"\nFinal Answer:(.*)")


def opening(description: str, add_description: str) -> list[dict[str, str]]:
    """The conversation AgentBench starts every DBBench task with."""
    return [
        {"role": "user", "content": INSTRUCTION},
        {"role": "assistant", "content": "Ok."},
        {"role": "user", "content": description + "\n" + add_description},
    ]


def wants_operation(reply: str) -> bool:
    """True when the first ``Action: ...`` line of the reply is exactly ``Operation``."""
    action = _ACTION.search(reply)
    return action is not None and action.group(1) == "Operation"


def extract_sql(reply: str) -> str | None:
    """The first ```sql fence, stripped, its lines joined by spaces (None: no fence)."""
    block = _SQL.search(reply)
    if block is None:
        return None
    return block.group(1).strip().replace("\n", " ")


def extract_answer(reply: str) -> str | None:
    """The rest of the line after ``\\nFinal Answer:`` (None: no such line)."""
    final = _FINAL.search(reply)
    return final.group(1) if final else None


def observation(
    rows: list[tuple[Any, ...]] | None, error: str | None, *, truncated: bool, max_chars: int = 800
) -> str:
    """What the model sees after an operation."""
    text = error if error is not None else str(rows or [])
    if len(text) > max_chars or (truncated and error is None):
        text = text[:max_chars] + TRUNCATED
    return text


# ------------------------------------------------------------------ judging


def _literal(text: str) -> Any:
    """Python literal of model output, never ``eval``: it is untrusted."""
    return ast.literal_eval(text.strip())


def judge_cycleqd(answer: str | None, label: tuple[Any, ...]) -> bool:
    """AgentBench v0.2: ``list(<answer literal>)`` (a quoted string becomes its characters);
    one value each: equal as floats, else as they are; several: equal as sets."""
    if answer is None:
        return False
    try:
        values = list(_literal(answer))
    except Exception:  # noqa: BLE001 - v0.2 falls back to the raw text on any failure
        values = [answer]
    if len(values) == 1 and len(label) == 1:
        try:
            return float(values[0]) == float(label[0])
        except (ValueError, TypeError, OverflowError):
            return values[0] == label[0]
    try:
        return set(values) == set(label)
    except TypeError:  # unhashable values: v0.2 counts them wrong
        return False


_SPECIAL_AS_ZERO = {"none", "null", "undefined", "nan", "inf", "infinity", "-inf", "-infinity", ""}


def _normalise(value: Any) -> str:
    """One value as AgentBench main compares it: percent and thousands separators
    dropped, every kind of "nothing" read as "0"."""
    if value is None:
        return "0"
    text = str(value).strip()
    if text.endswith("%"):
        return text[:-1].strip()
    if "," in text and not (text.startswith("[") or text.endswith("]")):
        text = text.replace(",", "")
    return "0" if text.lower() in _SPECIAL_AS_ZERO else text


def _unquote(value: Any) -> str:
    return str(value).strip().strip("'\"")


def clean_values(answer: Any) -> list[str]:
    """An answer (model text or gold list) as AgentBench main's list of compared strings.

    Accepts a bare string, a literal list, and a pasted result such as
    ``[('a',), ('b',)]`` (single-value tuples are unpacked).
    """
    if answer is None:
        return ["0"]
    if isinstance(answer, (list, tuple)):
        items = list(answer)
    else:
        text = str(answer).strip()
        if not (text.startswith("[") and text.endswith("]")):
            return [_normalise(_unquote(text))]
        try:
            parsed = _literal(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return [_normalise(_unquote(p)) for p in _split_outside_quotes(text[1:-1])]
        if isinstance(parsed, list) and parsed and all(isinstance(i, tuple) for i in parsed):
            return [_normalise(_unquote(i[0])) for i in parsed if len(i) == 1]
        if not isinstance(parsed, list):
            return [_normalise(_unquote(text))]
        items = parsed
    return [
        _normalise(_unquote(i[0] if isinstance(i, tuple) and len(i) == 1 else i)) for i in items
    ]


def _split_outside_quotes(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char in "'\"":
            quoted = not quoted
        elif char == "," and not quoted:
            if current:
                parts.append(current)
            current = ""
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def _is_float(text: str) -> bool:
    try:
        float(text)
    except (ValueError, OverflowError):
        return False
    return True


def _close(a: str, b: str) -> bool:
    return abs(float(a) - float(b)) <= FLOAT_TOLERANCE


def judge_agentbench(answer: str | None, label: tuple[Any, ...]) -> bool:
    """AgentBench main's rules: numbers within 1e-2, several numbers matched one to one,
    other values compared as sets of normalised strings."""
    if answer is None:
        return False
    got, want = clean_values(answer), clean_values(list(label))
    if len(got) == 1 and len(want) == 1:
        if _is_float(got[0]) and _is_float(want[0]):
            return _close(got[0], want[0])
        return got[0] == want[0]
    if all(map(_is_float, got)) and all(map(_is_float, want)):
        if len(got) != len(want):
            return False
        unmatched = list(want)
        for value in got:
            match = next((w for w in unmatched if _close(value, w)), None)
            if match is None:
                return False
            unmatched.remove(match)
        return True
    return set(got) == set(want)


JUDGES = {"agentbench": judge_agentbench, "cycleqd": judge_cycleqd}
