"""DBBench evaluator on SQLite and on a real MariaDB server, driven by scripted agents."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mergekit_cycleqd.evaluate.agentbench.db_backends import (
    SQLiteBackend,
    TableSpec,
    table_fingerprint,
)
from mergekit_cycleqd.evaluate.agentbench.dbbench import answers_match, parse_final_answer
from mergekit_cycleqd.evaluate.agentbench.dbbench_scripts import (
    answer,
    gold_agent,
    operation,
    wrong_agent,
)
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator
from tests.mariadb_server import mariadb_server as _mariadb_server_fixture

mariadb_server = _mariadb_server_fixture  # a module attribute is how pytest finds the fixture

TYPE_COUNTS = {
    "INSERT": 20,
    "UPDATE": 20,
    "other": 4,
    "comparison": 4,
    "counting": 3,
    "ranking": 3,
    "aggregation-SUM": 2,
    "aggregation-MAX": 2,
    "aggregation-MIN": 1,
    "aggregation-AVG": 1,
}
CATEGORY_METRICS = ("overall_cat_accuracy", "select_accuracy", "insert_accuracy", "update_accuracy")


@pytest.fixture(scope="module")
def dev_path(shared_data):
    return shared_data / "agentbench" / "dbbench" / "dev.jsonl"


def mysql_options(server, **extra) -> dict:
    return {
        "kind": "mysql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        **extra,
    }


def assert_all_metrics(result, value: float) -> None:
    assert result.score == value
    expected = {name: value for name in (*CATEGORY_METRICS, "accuracy")}
    expected.update({f"type_accuracy/{kind}": value for kind in TYPE_COUNTS})
    assert result.metrics == expected
    assert len(result.samples) == 60


# ------------------------------------------------------------------ judging


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("['March 19, 1998']", ["March 19, 1998"]),
        ("[('a', 1), ('b', 2)]", ["a", 1, "b", 2]),
        ("March 19, 1998", ["March 19, 1998"]),
        ("17\nI counted them.", [17]),
        ("__import__('os').system('echo pwned')", ["__import__('os').system('echo pwned')"]),
    ],
)
def test_parse_final_answer(text, values):
    assert parse_final_answer(text) == values


@pytest.mark.parametrize(
    ("got", "label", "expected"),
    [
        ([1], ["1.0"], True),
        (["2011"], ["2011.0"], True),
        ([21000.0000001], ["21000.0"], True),
        ([2], ["2.5"], False),
        ([None], ["none"], True),
        (["K1", "K2"], ["K2", "K1"], True),
        (["K1"], ["K1", "K2"], False),
        (["Giza"], ["Giza"], True),
        (["giza"], ["Giza"], False),
        (["1–0", "2–0"], ["1–0", "2–0"], True),
    ],
)
def test_answers_match(got, label, expected):
    assert answers_match(got, label) is expected


def test_fingerprint_of_an_empty_table_is_null():
    assert table_fingerprint([]) is None


# ------------------------------------------------------------------ SQLite


def test_gold_scores_100_and_batches_rounds_on_sqlite(dev_path):
    evaluator = build_evaluator("dbbench", {"path": str(dev_path)})
    backend = ScriptedBackend(gold_agent(evaluator))
    result = evaluator.evaluate(backend)
    assert_all_metrics(result, 1.0)
    assert backend.calls == 2  # 60 dialogues, 2 rounds, one batched generate per round
    assert {s["status"] for s in result.samples} == {"answered"}
    inserts = [s for s in result.samples if s["type"] == "INSERT"]
    assert all(s["fingerprint"] == s["answer_md5"] for s in inserts)


def test_wrong_agent_scores_0_on_sqlite(dev_path):
    evaluator = build_evaluator("dbbench", {"path": str(dev_path)})
    assert_all_metrics(evaluator.evaluate(ScriptedBackend(wrong_agent(evaluator))), 0.0)


def test_round_limit_and_invalid_format(dev_path):
    evaluator = build_evaluator(
        "dbbench", {"path": str(dev_path), "indices": [0, 20], "max_rounds": 3}
    )
    looping = ScriptedBackend(lambda prompt: operation("SELECT 1"))
    result = evaluator.evaluate(looping)
    assert looping.calls == 3
    assert [s["status"] for s in result.samples] == ["round_limit", "round_limit"]
    assert result.metrics["overall_cat_accuracy"] == 0.0

    chatty = evaluator.evaluate(ScriptedBackend(lambda prompt: "I think the answer is 7."))
    assert [s["status"] for s in chatty.samples] == ["invalid_format", "invalid_format"]


def test_observations_show_rows_errors_and_truncation(dev_path):
    evaluator = build_evaluator(
        "dbbench", {"path": str(dev_path), "indices": [1], "max_observation_chars": 40}
    )
    script = iter(
        [
            operation("SELECT `Class`, `No` FROM race_results LIMIT 2"),
            "Action: Operation\nno block here",
            operation("SELEC nonsense"),
            operation("SELECT `Drivers` FROM race_results"),
            answer(["x"]),
        ]
    )
    seen: list[str] = []

    def agent(prompt):
        if prompt[-1]["role"] == "user" and len(prompt) > 1:
            seen.append(prompt[-1]["content"])
        return next(script)

    evaluator.evaluate(ScriptedBackend(agent))
    assert seen[0].startswith("[(") and len(seen[0]) <= 40 + len(" ... (truncated)")
    assert seen[1].startswith("Error: no SQL found")
    assert seen[2].startswith("Error: ") and "syntax error" in seen[2]
    assert seen[3].endswith(" ... (truncated)")


def test_hostile_sql_on_sqlite_is_contained(dev_path, tmp_path):
    outside = tmp_path / "stolen.db"
    evaluator = build_evaluator(
        "dbbench", {"path": str(dev_path), "indices": [0, 20], "query_timeout_s": 0.5}
    )
    script = [
        operation(f"ATTACH DATABASE '{outside}' AS stolen"),
        operation(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT MAX(x) FROM n"
        ),
        answer(["March 19, 1998"]),
    ]
    observations: list[str] = []

    def agent(prompt):
        turn = sum(m["role"] == "assistant" for m in prompt)
        if turn:
            observations.append(prompt[-1]["content"])
        return script[turn]

    result = evaluator.evaluate(ScriptedBackend(agent))
    assert not outside.exists()
    attach, endless = observations[0:4:2]
    assert attach == "Error: not authorized"
    assert endless == "Error: query exceeded the 0.5 s time limit"
    assert [s["correct"] for s in result.samples] == [True, False]


def test_sqlite_task_databases_are_independent():
    table = TableSpec("t", ("a",), (("1",),))
    first, second = SQLiteBackend().create(table), SQLiteBackend().create(table)
    assert first.execute("DELETE FROM t").error is None
    assert second.execute("SELECT COUNT(*) FROM t").rows == [(1,)]


# ------------------------------------------------------------------ MariaDB


def _leftovers(server) -> tuple[list, list]:
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SHOW DATABASES LIKE 'cqd\\_%'")
        databases = cursor.fetchall()
        cursor.execute(
            "SELECT user FROM mysql.user WHERE user LIKE 'cqd\\_%%' AND user <> %s", (server.user,)
        )
        return list(databases), list(cursor.fetchall())


def test_gold_scores_100_on_mariadb(dev_path, mariadb_server):
    evaluator = build_evaluator(
        "dbbench", {"path": str(dev_path), "database": mysql_options(mariadb_server)}
    )
    result = evaluator.evaluate(ScriptedBackend(gold_agent(evaluator)))
    assert_all_metrics(result, 1.0)
    assert _leftovers(mariadb_server) == ([], [])


def test_wrong_agent_scores_0_on_mariadb(dev_path, mariadb_server):
    evaluator = build_evaluator(
        "dbbench", {"path": str(dev_path), "database": mysql_options(mariadb_server)}
    )
    assert_all_metrics(evaluator.evaluate(ScriptedBackend(wrong_agent(evaluator))), 0.0)
    assert _leftovers(mariadb_server) == ([], [])


def test_hostile_sql_on_mariadb_cannot_touch_other_databases(dev_path, mariadb_server):
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE IF NOT EXISTS sentinel")
        cursor.execute("CREATE TABLE IF NOT EXISTS sentinel.keep (v TEXT)")
        cursor.execute("INSERT INTO sentinel.keep VALUES ('still here')")
    evaluator = build_evaluator(
        "dbbench",
        {
            "path": str(dev_path),
            "indices": [20],
            "max_rounds": 8,
            "query_timeout_s": 1,
            "database": mysql_options(mariadb_server),
        },
    )
    attacks = [
        "DROP DATABASE sentinel",
        "DELETE FROM sentinel.keep",
        "DROP DATABASE mysql",
        "CREATE USER 'intruder'@'%' IDENTIFIED BY 'x'",
        "SELECT SLEEP(30)",
        "SHOW DATABASES",
    ]
    observations: list[str] = []

    def agent(prompt):
        turn = sum(m["role"] == "assistant" for m in prompt)
        if turn:
            observations.append(prompt[-1]["content"])
        return operation(attacks[turn]) if turn < len(attacks) else answer([])

    result = evaluator.evaluate(ScriptedBackend(agent))
    assert result.score == 0.0
    assert all(o.startswith("Error: ") for o in observations[:5]), observations
    assert "Access denied" in observations[0] and "command denied" in observations[1]
    assert "max_statement_time" in observations[4]
    assert "sentinel" not in observations[5]
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT v FROM sentinel.keep")
        assert cursor.fetchall() == (("still here",),)
        cursor.execute("SELECT COUNT(*) FROM mysql.user WHERE user = 'intruder'")
        assert cursor.fetchone() == (0,)
        cursor.execute("DROP DATABASE sentinel")
    assert _leftovers(mariadb_server) == ([], [])


# ------------------------------------------------------------------ options


def test_bad_path_is_named(tmp_path):
    missing = tmp_path / "dev.jsonl"
    with pytest.raises(ValidationError) as error:
        build_evaluator("dbbench", {"path": str(missing)})
    assert f"DBBench file {str(missing)!r} does not exist" in str(error.value)


def test_unknown_keys_are_named(dev_path):
    with pytest.raises(ValidationError) as error:
        build_evaluator("dbbench", {"path": str(dev_path), "max_round": 3})
    assert "max_round" in str(error.value) and "Extra inputs are not permitted" in str(error.value)
    with pytest.raises(ValidationError) as error:
        build_evaluator(
            "dbbench", {"path": str(dev_path), "database": {"kind": "mysql", "hots": "x"}}
        )
    assert "database.mysql.hots" in str(error.value)
    with pytest.raises(ValidationError) as error:
        build_evaluator("dbbench", {"path": str(dev_path), "database": {"kind": "postgres"}})
    assert "'sqlite', 'mysql'" in str(error.value)


def test_bad_indices_and_password_env(dev_path, monkeypatch):
    with pytest.raises(ValueError, match=r"indices: \[60, 61\] out of range .* \(60 tasks\)"):
        build_evaluator("dbbench", {"path": str(dev_path), "indices": ["58-61"]})
    monkeypatch.delenv("CQD_NO_SUCH_PASSWORD", raising=False)
    evaluator = build_evaluator(
        "dbbench",
        {
            "path": str(dev_path),
            "database": {"kind": "mysql", "password_env": "CQD_NO_SUCH_PASSWORD"},
        },
    )
    with pytest.raises(
        ValueError, match=r"database.password_env: \$CQD_NO_SUCH_PASSWORD is not set"
    ):
        evaluator.evaluate(ScriptedBackend(lambda prompt: ""))


def test_malformed_row_names_file_line_and_field(tmp_path):
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"description": "q", "type": ["counting"], "label": ["1"]}\n')
    with pytest.raises(ValueError, match=f"{bad}:1: missing or malformed field 'table'"):
        build_evaluator("dbbench", {"path": str(bad)})
