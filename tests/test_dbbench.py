"""DBBench on SQLite: protocol, judging, loading and hostile SQL, on records the tests write.

Real AgentBench data is replayed in addition when it is available (CYCLEQD_TEST_DATA).
MariaDB tests are in test_dbbench_mariadb.py.
"""

from __future__ import annotations

import os
import sqlite3
import time
import tracemalloc

import pytest
from pydantic import ValidationError

from cycleqd_evaluators.agentbench import dbbench_protocol as dbp
from cycleqd_evaluators.agentbench.db_backends import TableSpec, table_fingerprint
from cycleqd_evaluators.agentbench.dbbench_scripts import (
    answer,
    gold_agent,
    operation,
    task_lookup,
    wrong_agent,
)
from cycleqd_evaluators.agentbench.dbbench_sqlite import SQLiteBackend
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator
from tests.dbbench_fixtures import (
    HAND,
    NEAR_MISS,
    RECORDS,
    SKIPPED,
    expected_md5,
    record,
    scripted,
    write_records,
)


@pytest.fixture
def fixture_path(tmp_path):
    return write_records(tmp_path / "db.jsonl")


def evaluator_for(path, **options):
    return build_evaluator("dbbench", {"path": str(path), **options})


def per_task(agent_script):
    """An agent replying from a per-turn list, the same for every task."""

    def agent(prompt):
        turn = sum(m["role"] == "assistant" for m in prompt) - 1
        return agent_script[min(turn, len(agent_script) - 1)]

    return agent


# ------------------------------------------------------------ outcomes from hand-written work


@pytest.mark.parametrize("protocol", ["agentbench", "cycleqd"])
def test_hand_written_work_passes_and_near_misses_fail(fixture_path, protocol):
    evaluator = evaluator_for(fixture_path, protocol=protocol)
    right = evaluator.evaluate(ScriptedBackend(scripted(HAND, evaluator)))
    assert {s["index"]: s["correct"] for s in right.samples} == {i: True for i in HAND}
    assert right.score == 1.0
    wrong = evaluator.evaluate(ScriptedBackend(scripted(NEAR_MISS, evaluator)))
    assert {s["index"]: s["correct"] for s in wrong.samples} == {i: False for i in NEAR_MISS}
    assert wrong.score == 0.0


def test_gold_agent_smoke_and_wrong_agent(fixture_path):
    evaluator = evaluator_for(fixture_path)
    gold = ScriptedBackend(gold_agent(evaluator))
    result = evaluator.evaluate(gold)
    assert result.score == 1.0 and gold.calls == 2  # one batched generate per round
    assert evaluator.evaluate(ScriptedBackend(wrong_agent(evaluator))).score == 0.0


def test_table_hash_matches_an_independent_computation():
    rows = [["Montréal", "Canada", "1,762,949"], ["Lyon", None, "513,275"]]
    assert table_fingerprint(rows) == expected_md5(rows)
    assert table_fingerprint([]) is None


# ------------------------------------------------------------ loading real-world files


def test_unloadable_records_are_skipped_and_reported_not_the_file(fixture_path):
    evaluator = evaluator_for(fixture_path)
    assert [i for i, _ in evaluator.skipped] == sorted(SKIPPED)
    for index, reason in evaluator.skipped:
        assert SKIPPED[index] in reason
    assert [t.index for t in evaluator.tasks] == [
        i for i in range(len(RECORDS)) if i not in SKIPPED
    ]
    short = next(t for t in evaluator.tasks if t.table.name == "Short rows")
    assert short.table.rows == (("1", "x", None), (None, None, None), ("3", "y", "z"))
    assert short.padded_rows == 2
    result = evaluator.evaluate(ScriptedBackend(scripted(HAND, evaluator)))
    assert result.metrics["records_skipped"] == 2.0


def test_indices_name_record_positions_after_loading(fixture_path):
    evaluator = evaluator_for(fixture_path, indices=["8-11"])
    assert [t.index for t in evaluator.tasks] == [8, 11]
    assert [i for i, _ in evaluator.skipped] == [9, 10]
    with pytest.raises(ValueError, match=r"indices: \[12\] out of range .* \(12 records\)"):
        evaluator_for(fixture_path, indices=[12])


# ------------------------------------------------------------ protocol rules


def test_opening_is_instruction_ok_then_description_and_add_description(fixture_path):
    evaluator = evaluator_for(fixture_path, indices=[0])
    seen = []

    def agent(prompt):
        seen.append(list(prompt))
        return answer(["2"])

    evaluator.evaluate(ScriptedBackend(agent))
    roles = [m["role"] for m in seen[0]]
    assert roles == ["user", "assistant", "user"]
    assert "MySQL" in seen[0][0]["content"] and seen[0][1]["content"] == "Ok."
    assert seen[0][2]["content"] == RECORDS[0]["description"] + "\n" + RECORDS[0]["add_description"]


@pytest.mark.parametrize(("protocol", "operations"), [("agentbench", 15), ("cycleqd", 5)])
def test_round_limit_counts_operations_and_the_last_reply_is_not_run(
    fixture_path, protocol, operations
):
    evaluator = evaluator_for(fixture_path, protocol=protocol, indices=[3])  # an INSERT task
    backend = ScriptedBackend(
        per_task(
            [operation("SELECT 1")] * operations
            + [operation("INSERT INTO Cities VALUES ('Paris', 'France', '2,102,650')")]
        )
    )
    result = evaluator.evaluate(backend)
    assert backend.calls == operations + 1
    sample = result.samples[0]
    assert sample["operations"] == operations and sample["status"] == "round_limit"
    assert sample["correct"] is False  # the INSERT in the extra reply never ran


def test_observations_rows_empty_errors_and_truncation(fixture_path):
    evaluator = evaluator_for(fixture_path, indices=[0], max_observation_chars=30)
    script = [
        operation("SELECT City FROM Cities WHERE City = 'Lyon'"),
        operation("SELECT City FROM Cities WHERE City = 'Nowhere'"),
        operation("SELEC nonsense"),
        operation("SELECT City, Country, Population FROM Cities"),
        operation("INSERT INTO Cities VALUES ('a', 'b', 'c');\nSELECT COUNT(*)\nFROM Cities"),
        answer(["2"]),
    ]
    seen = []

    def agent(prompt):
        if len(prompt) > 3:
            seen.append(prompt[-1]["content"])
        return per_task(script)(prompt)

    evaluator.evaluate(ScriptedBackend(agent))
    assert seen[0] == "[('Lyon',)]"
    assert seen[1] == "[]"
    assert seen[2] == 'near "SELEC": syntax error'
    assert (
        seen[3]
        == str(
            [
                ("Montréal", "Canada", "1,762,949"),
                ("Toronto", "Canada", "2,794,356"),
                ("Lyon", "France", "513,275"),
            ]
        )[:30]
        + "[TRUNCATED]"
    )
    assert seen[4] == "[(4,)]"  # lines joined, both statements run, the last one's rows shown


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("Action: Operation\n```\nSELECT 1\n```", "invalid_format"),  # no ```sql fence
        ("I think it is 2.", "invalid_format"),
        ("Final Answer: ['2']", "invalid_format"),  # AgentBench needs the line break before it
        ("Action: Answer\nFinal Answer: ['2']\nbecause I counted", "answered"),
    ],
)
def test_reply_forms(fixture_path, reply, status):
    result = evaluator_for(fixture_path, indices=[0]).evaluate(ScriptedBackend(lambda p: reply))
    assert result.samples[0]["status"] == status
    assert result.samples[0]["correct"] is (status == "answered")


def test_overall_cat_accuracy_always_divides_by_three(tmp_path):
    path = write_records(tmp_path / "select.jsonl", RECORDS[:2])
    evaluator = evaluator_for(path)
    result = evaluator.evaluate(ScriptedBackend(gold_agent(evaluator)))
    assert result.metrics["select_accuracy"] == 1.0
    assert result.metrics["insert_accuracy"] == result.metrics["update_accuracy"] == 0.0
    assert result.score == pytest.approx(1 / 3)


# Each judging rule once, under both protocols (agentbench = AgentBench main, cycleqd = v0.2).
@pytest.mark.parametrize(
    ("answer_text", "label", "agentbench", "cycleqd"),
    [
        (' ["Lyon"]', ["Lyon"], True, True),
        (" Lyon", ["Lyon"], True, False),  # bare string: v0.2 keeps the leading space
        (' "Lyon"', ["Lyon"], True, False),  # v0.2: list("Lyon") is its characters
        (" [('Lyon',)]", ["Lyon"], True, False),  # a pasted result
        (" ['1,762,949']", ["1762949"], True, False),  # thousands separators
        (" ['45%']", ["45"], True, False),  # percent sign
        (" [2.004]", ["2"], True, False),  # tolerance 1e-2
        (" [2.02]", ["2"], False, False),
        (" [1]", ["1.0"], True, True),  # numbers compare as numbers
        (" ['None']", ["none"], True, False),  # every "nothing" is 0 on main
        (' ["Toronto", "Montréal"]', ["Montréal", "Toronto"], True, True),  # several: sets
        (' ["Toronto"]', ["Montréal", "Toronto"], False, False),
        (" [1.001, 2]", ["2.0", "1.0"], True, False),  # several numbers, one to one
        (" __import__('os').system('true')", ["0"], False, False),  # never evaluated
    ],
)
def test_judging_rules(answer_text, label, agentbench, cycleqd):
    assert dbp.judge_agentbench(answer_text, tuple(label)) is agentbench
    assert dbp.judge_cycleqd(answer_text, tuple(label)) is cycleqd


# ------------------------------------------------------------ hostile SQL on SQLite


def _episode_observations(evaluator, attacks, final):
    seen = []

    def agent(prompt):
        turn = sum(m["role"] == "assistant" for m in prompt) - 1
        if turn:
            seen.append(prompt[-1]["content"])
        return operation(attacks[turn]) if turn < len(attacks) else answer(final)

    return evaluator.evaluate(ScriptedBackend(agent)), seen


def test_process_wide_pragmas_are_refused_and_later_tasks_still_work(fixture_path, tmp_path):
    probe = sqlite3.connect(":memory:")
    before = [
        probe.execute(f"PRAGMA {p}").fetchone() for p in ("hard_heap_limit", "soft_heap_limit")
    ]
    attacks = [
        "PRAGMA hard_heap_limit = 100000",
        "PRAGMA soft_heap_limit = 100000",
        f"PRAGMA temp_store_directory = '{tmp_path}'",
        "SELECT * FROM pragma_hard_heap_limit",
        "PRAGMA table_info(Cities)",
    ]
    try:
        result, seen = _episode_observations(
            evaluator_for(fixture_path, indices=[0]), attacks, ["2"]
        )
        after = [
            probe.execute(f"PRAGMA {p}").fetchone() for p in ("hard_heap_limit", "soft_heap_limit")
        ]
    finally:
        probe.execute("PRAGMA hard_heap_limit = 0")
        probe.execute("PRAGMA soft_heap_limit = 0")
    assert seen[:4] == ["not authorized"] * 4
    assert seen[4].startswith("[(0, 'City', 'TEXT'")  # read-only pragmas stay usable
    assert result.score == pytest.approx(1 / 3)  # the one SELECT task answered right
    assert after == before == [(0,), (0,)]
    assert os.listdir(tmp_path) == ["db.jsonl"]
    later = evaluator_for(fixture_path)
    assert later.evaluate(ScriptedBackend(gold_agent(later))).score == 1.0


def test_files_and_extensions_are_out_of_reach(fixture_path, tmp_path):
    attacks = [
        f"ATTACH DATABASE '{tmp_path / 'stolen.db'}' AS stolen",
        f"VACUUM INTO '{tmp_path / 'copy.db'}'",
        "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so.0')",
        "CREATE VIRTUAL TABLE v USING fts5(x)",
    ]
    result, seen = _episode_observations(evaluator_for(fixture_path, indices=[3]), attacks, [])
    assert all("not authorized" in s or "authorization denied" in s for s in seen), seen
    assert os.listdir(tmp_path) == ["db.jsonl"]
    assert result.score == 0.0


def test_time_limit_ends_runaway_statements(fixture_path):
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT MAX(x) FROM n"
    evaluator = evaluator_for(fixture_path, indices=[0], query_timeout_s=0.5)
    started = time.monotonic()
    result, seen = _episode_observations(evaluator, [endless], ["2"])
    assert seen == ["query exceeded the 0.5 s time limit"]
    assert time.monotonic() - started < 30  # generous: the point is that it ends
    assert result.samples[0]["correct"] is True


def test_results_are_capped_in_bytes_while_fetching(fixture_path):
    blobs = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10) "
        "SELECT zeroblob(9000000) FROM c"
    )
    evaluator = evaluator_for(fixture_path, indices=[0], max_result_bytes=100_000)
    tracemalloc.start()
    try:
        result, seen = _episode_observations(evaluator, [blobs], ["2"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen[0].endswith("[TRUNCATED]") and len(seen[0]) == 800 + len("[TRUNCATED]")
    assert peak < 40_000_000  # one 9 MB row at most, never the 90 MB result
    assert result.samples[0]["correct"] is True


def test_tables_the_model_builds_are_capped_in_size(fixture_path):
    grow = (
        "CREATE {} TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "LIMIT 100) SELECT zeroblob(5000000) AS b FROM c"
    )
    attacks = [
        grow.format(""),
        grow.format("TEMPORARY"),
        "PRAGMA max_page_count = 1000000000",
        "SELECT COUNT(*) FROM Cities",
    ]
    result, seen = _episode_observations(evaluator_for(fixture_path, indices=[0]), attacks, ["2"])
    assert seen == ["database or disk is full"] * 2 + ["not authorized", "[(3,)]"]
    assert result.samples[0]["correct"] is True


def test_sqlite_task_databases_are_independent():
    table = TableSpec("t", ("a",), (("1",),))
    first, second = SQLiteBackend().create(table), SQLiteBackend().create(table)
    assert first.execute("DELETE FROM t").error is None
    assert second.execute("SELECT COUNT(*) FROM t").rows == [(1,)]


# ------------------------------------------------------------ options


def test_bad_path_is_named(tmp_path):
    missing = tmp_path / "dev.jsonl"
    with pytest.raises(ValidationError) as error:
        build_evaluator("dbbench", {"path": str(missing)})
    assert f"DBBench file {str(missing)!r} does not exist" in str(error.value)


def test_unknown_keys_and_protocols_are_named(fixture_path):
    with pytest.raises(ValidationError) as error:
        evaluator_for(fixture_path, max_round=3)
    assert "max_round" in str(error.value) and "Extra inputs are not permitted" in str(error.value)
    with pytest.raises(ValidationError) as error:
        evaluator_for(fixture_path, protocol="v0.2")
    assert "'agentbench' or 'cycleqd'" in str(error.value)
    with pytest.raises(ValidationError) as error:
        evaluator_for(fixture_path, database={"kind": "postgres"})
    assert "'sqlite', 'mysql'" in str(error.value)


def test_missing_password_env_is_named(fixture_path, monkeypatch):
    monkeypatch.delenv("CQD_NO_SUCH_PASSWORD", raising=False)
    evaluator = evaluator_for(
        fixture_path, database={"kind": "mysql", "password_env": "CQD_NO_SUCH_PASSWORD"}
    )
    with pytest.raises(
        ValueError, match=r"database.password_env: \$CQD_NO_SUCH_PASSWORD is not set"
    ):
        evaluator.evaluate(ScriptedBackend(lambda prompt: ""))


def test_task_lookup_survives_identical_openings(tmp_path):
    twice = [RECORDS[0], RECORDS[0]]
    evaluator = evaluator_for(write_records(tmp_path / "twice.jsonl", twice))
    assert task_lookup(evaluator) is not None and len(evaluator.tasks) == 2
    assert evaluator.evaluate(ScriptedBackend(gold_agent(evaluator))).score == pytest.approx(1 / 3)


# ------------------------------------------------------------ the real public dev file


@pytest.mark.parametrize("protocol", ["agentbench", "cycleqd"])
def test_gold_replay_of_the_public_dev_file_on_sqlite(shared_data, protocol):
    evaluator = evaluator_for(
        shared_data / "agentbench" / "dbbench" / "dev.jsonl", protocol=protocol
    )
    assert len(evaluator.tasks) == 60 and evaluator.skipped == []
    result = evaluator.evaluate(ScriptedBackend(gold_agent(evaluator)))
    assert [s["index"] for s in result.samples if not s["correct"]] == []
    assert evaluator.evaluate(ScriptedBackend(wrong_agent(evaluator))).score == 0.0


def test_record_builds_agentbench_format():
    built = record(
        ("T", ["a"], [["1"]]),
        "INSERT",
        ["INSERT INTO T VALUES ('2')"],
        "add 2",
        md5_rows=[["1"], ["2"]],
    )
    assert built["table"]["table_info"]["columns"] == [{"name": "a", "type": "TEXT"}]
    assert built["answer_md5"] == f"[('{expected_md5([['1'], ['2']])}',)]"
