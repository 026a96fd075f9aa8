"""Scripted DBBench agents (gold and wrong) for tests and benchmarks.

They answer through a ScriptedBackend exactly as a model would: the gold agent
runs the task's reference SQL in its first reply and gives the reference answer
in its second; the wrong agent changes nothing and answers a value no task has.
"""

from __future__ import annotations

from collections.abc import Callable

from cycleqd_evaluators.agentbench.dbbench import DBBenchEvaluator, build_opening
from cycleqd_evaluators.agentbench.dbbench_tasks import DBTask
from mergekit_cycleqd.evaluate import Prompt

WRONG_ANSWER = "definitely not the answer"


def task_lookup(evaluator: DBBenchEvaluator) -> Callable[[Prompt], tuple[DBTask, int]]:
    """Map a conversation to its task (by its task message) and the replies so far."""
    by_message: dict[str, DBTask] = {}
    for task in evaluator.tasks:
        by_message.setdefault(build_opening(task)[-1]["content"], task)

    def lookup(prompt: Prompt) -> tuple[DBTask, int]:
        assert not isinstance(prompt, str), "DBBench prompts are conversations"
        users = [m["content"] for m in prompt if m["role"] == "user"]
        replies = sum(1 for m in prompt if m["role"] == "assistant") - 1  # minus "Ok."
        return by_message[users[1]], replies

    return lookup


def operation(sql: str) -> str:
    return f"I will run a query.\nAction: Operation\n```sql\n{sql}\n```"


def answer(values: object) -> str:
    return f"Done.\nAction: Answer\nFinal Answer: {values!r}"


def gold_agent(evaluator: DBBenchEvaluator) -> Callable[[Prompt], str]:
    """Reference SQL first (its result is ignored), then the reference answer."""
    lookup = task_lookup(evaluator)

    def reply(prompt: Prompt) -> str:
        task, turn = lookup(prompt)
        if turn == 0 and task.gold_sql:
            return operation(task.gold_sql)
        return answer(list(task.label) if task.category == "SELECT" else [])

    return reply


def wrong_agent(evaluator: DBBenchEvaluator) -> Callable[[Prompt], str]:
    """Looks at the table, leaves it unchanged, answers a value no task has."""
    lookup = task_lookup(evaluator)

    def reply(prompt: Prompt) -> str:
        task, turn = lookup(prompt)
        if turn == 0:
            return operation(f"SELECT COUNT(*) FROM `{task.table.name.replace('`', '``')}`")
        return answer([WRONG_ANSWER])

    return reply
