"""DBBench on a real MariaDB server: same answers as SQLite, limits the model cannot lift.

Each test starts from (and checks it leaves) a server with no task databases
or users; servers are throw-away (tests/mariadb_server.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cycleqd_evaluators.agentbench.dbbench_scripts import (
    answer,
    gold_agent,
    operation,
    wrong_agent,
)
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator
from tests.dbbench_fixtures import HAND, NEAR_MISS, RECORDS, record, scripted, write_records
from tests.mariadb_server import mariadb_server as _mariadb_server_fixture
from tests.mariadb_server import start_mariadb

mariadb_server = _mariadb_server_fixture  # a module attribute is how pytest finds the fixture


def mysql_options(server) -> dict:
    return {
        "kind": "mysql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
    }


@pytest.fixture
def fixture_path(tmp_path):
    return write_records(tmp_path / "db.jsonl")


def on_server(path, server, **options):
    return build_evaluator(
        "dbbench", {"path": str(path), "database": mysql_options(server), **options}
    )


def leftovers(server) -> tuple[list, list, list]:
    """Task databases, task users and their connections still on the server."""
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SHOW DATABASES LIKE 'cqd\\_%'")
        databases = list(cursor.fetchall())
        cursor.execute(
            "SELECT user FROM mysql.user WHERE user LIKE 'cqd\\_%%' AND user <> %s", (server.user,)
        )
        users = list(cursor.fetchall())
        cursor.execute(
            "SELECT ID, INFO FROM information_schema.PROCESSLIST "
            "WHERE USER LIKE 'cqd\\_%%' AND USER <> %s",
            (server.user,),
        )
        return databases, users, list(cursor.fetchall())


def attack(evaluator, attacks, final):
    seen = []

    def agent(prompt):
        turn = sum(m["role"] == "assistant" for m in prompt) - 1
        if turn:
            seen.append(prompt[-1]["content"])
        return operation(attacks[turn]) if turn < len(attacks) else answer(final)

    return evaluator.evaluate(ScriptedBackend(agent)), seen


def test_hand_written_work_and_near_misses_score_as_on_sqlite(fixture_path, mariadb_server):
    evaluator = on_server(fixture_path, mariadb_server)
    right = evaluator.evaluate(ScriptedBackend(scripted(HAND, evaluator)))
    assert {s["index"]: s["correct"] for s in right.samples} == {i: True for i in HAND}
    wrong = evaluator.evaluate(ScriptedBackend(scripted(NEAR_MISS, evaluator)))
    assert {s["index"]: s["correct"] for s in wrong.samples} == {i: False for i in NEAR_MISS}
    gold = evaluator.evaluate(ScriptedBackend(gold_agent(evaluator)))
    assert gold.score == 1.0
    assert leftovers(mariadb_server) == ([], [], [])


def test_lifted_statement_limit_is_enforced_from_outside(fixture_path, mariadb_server):
    evaluator = on_server(fixture_path, mariadb_server, indices=[0], query_timeout_s=1)
    attacks = [
        "SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(60)",
        "SET SESSION max_statement_time=0; SELECT SLEEP(60)",
        "SELECT COUNT(*) FROM Cities",
    ]
    started = time.monotonic()
    result, seen = attack(evaluator, attacks, ["2"])
    elapsed = time.monotonic() - started
    assert seen[:2] == ["query exceeded the 1 s time limit"] * 2
    assert seen[2] == "[(3,)]"
    assert elapsed < 40  # two 60 s sleeps did not run out; generous for a loaded machine
    assert result.samples[0]["correct"] is True
    assert leftovers(mariadb_server) == ([], [], [])


def test_cleanup_does_not_wait_for_a_runaway_query(fixture_path, mariadb_server):
    """A statement still running when the task ends is killed before the DROP."""
    from cycleqd_evaluators.agentbench.db_backends import TableSpec
    from cycleqd_evaluators.agentbench.dbbench_mysql import MySQLBackend

    backend = MySQLBackend(
        mariadb_server.host,
        mariadb_server.port,
        mariadb_server.user,
        mariadb_server.password,
        query_timeout_s=120,
    )
    database = backend.create(TableSpec("t", ("a",), (("1",),)))
    runner = threading.Thread(
        target=database.execute,
        args=("SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(120) FROM t",),
        daemon=True,
    )
    runner.start()
    deadline = time.monotonic() + 30
    while not leftovers(mariadb_server)[2] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(mariadb_server)[2], "the runaway query never started"
    started = time.monotonic()
    database.close()
    assert time.monotonic() - started < 30
    runner.join(timeout=30)
    assert not runner.is_alive()
    backend.close()
    assert leftovers(mariadb_server) == ([], [], [])


def test_data_directory_cannot_place_files(fixture_path, mariadb_server):
    target = Path(tempfile.mkdtemp(prefix="cqd-datadir-"))
    target.chmod(0o777)  # even a directory the server user may write stays empty
    try:
        evaluator = on_server(fixture_path, mariadb_server, indices=[3])
        attacks = [
            f"CREATE TABLE x (a INT) DATA DIRECTORY='{target}'",
            f"SET SESSION sql_mode=''; CREATE TABLE y (a INT) ENGINE=MyISAM DATA DIRECTORY='{target}' "
            f"INDEX DIRECTORY='{target}'",
            "SET @s = CONCAT('CREATE TABLE z (a INT) DATA DIRECTORY=', QUOTE("
            + f"'{target}'"
            + "));"
            " PREPARE q FROM @s; EXECUTE q",
        ]
        result, seen = attack(evaluator, attacks, [])
        assert list(target.iterdir()) == []
        refused = "changing sql_mode and dynamic SQL (PREPARE/EXECUTE) are not allowed here"
        assert seen[1:] == [refused] * 2
        assert result.score == 0.0
    finally:
        shutil.rmtree(target, ignore_errors=True)
    assert leftovers(mariadb_server) == ([], [], [])


def test_other_databases_and_accounts_are_out_of_reach(fixture_path, mariadb_server):
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE IF NOT EXISTS sentinel")
        cursor.execute("CREATE TABLE IF NOT EXISTS sentinel.keep (v TEXT)")
        cursor.execute("DELETE FROM sentinel.keep")
        cursor.execute("INSERT INTO sentinel.keep VALUES ('still here')")
    attacks = [
        "DROP DATABASE sentinel",
        "DELETE FROM sentinel.keep",
        "DROP DATABASE mysql",
        "CREATE USER 'intruder'@'%' IDENTIFIED BY 'x'",
        "SELECT * FROM mysql.user",
        "SELECT LOAD_FILE('/etc/passwd')",
        "SHOW DATABASES",
    ]
    result, seen = attack(on_server(fixture_path, mariadb_server, indices=[3]), attacks, [])
    assert result.score == 0.0
    assert all(s.startswith(("1044 (42000)", "1142 (42000)", "1227 (42000)")) for s in seen[:5]), (
        seen
    )
    assert seen[5] == "[(None,)]"
    assert "sentinel" not in seen[6]
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT v FROM sentinel.keep")
        assert cursor.fetchall() == (("still here",),)
        cursor.execute("SELECT COUNT(*) FROM mysql.user WHERE user = 'intruder'")
        assert cursor.fetchone() == (0,)
        cursor.execute("DROP DATABASE sentinel")
    assert leftovers(mariadb_server) == ([], [], [])


def test_results_are_capped_in_bytes_on_the_server_too(fixture_path, mariadb_server):
    import tracemalloc

    big = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) "
        "SELECT REPEAT('a', 9000000) FROM c"
    )
    evaluator = on_server(fixture_path, mariadb_server, indices=[0], max_result_bytes=100_000)
    tracemalloc.start()
    try:
        result, seen = attack(evaluator, [big, "SELECT COUNT(*) FROM Cities"], ["2"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen[0].endswith("[TRUNCATED]") and seen[1] == "[(3,)]"
    assert peak < 60_000_000  # not the 90 MB result
    assert result.samples[0]["correct"] is True
    assert leftovers(mariadb_server) == ([], [], [])


@pytest.mark.slow
def test_more_tasks_than_the_server_allows_connections(tmp_path):
    """40 tasks on a server with max_connections=10: connections are opened per step."""
    path = write_records(tmp_path / "many.jsonl", [RECORDS[i] for i in (0, 3, 4, 7)] * 10)
    with start_mariadb(max_connections=10) as server:
        evaluator = on_server(path, server, concurrency=4)
        result = evaluator.evaluate(ScriptedBackend(gold_agent(evaluator)))
        assert [s["index"] for s in result.samples if not s["correct"]] == []
        assert result.score == 1.0
        assert leftovers(server) == ([], [], [])


def test_gold_replay_of_the_public_dev_file_on_mariadb(shared_data, mariadb_server):
    path = shared_data / "agentbench" / "dbbench" / "dev.jsonl"
    evaluator = on_server(path, mariadb_server)
    result = evaluator.evaluate(ScriptedBackend(gold_agent(evaluator)))
    assert [s["index"] for s in result.samples if not s["correct"]] == []
    assert evaluator.evaluate(ScriptedBackend(wrong_agent(evaluator))).score == 0.0
    assert leftovers(mariadb_server) == ([], [], [])


def test_the_test_server_runs_unprivileged(mariadb_server):
    if os.geteuid() == 0:
        assert mariadb_server.run_as in ("mysql", "nobody")
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.sql_mode, @@max_connections")
        sql_mode, max_connections = cursor.fetchone()
    assert "NO_DIR_IN_CREATE" in sql_mode and max_connections == 151


def test_strict_mode_rejects_text_compared_with_a_number(tmp_path, mariadb_server):
    """The known data problem: such a gold UPDATE fails on MySQL (error 1292), not on SQLite."""
    gold = "UPDATE `Points table` SET Team = 'X' WHERE Points = 16"
    points = ("Points table", ["Team", "Points"], [["A", "16"], ["B", "n/a"]])
    path = write_records(
        tmp_path / "strict.jsonl",
        [
            record(
                points,
                "UPDATE",
                [gold],
                "Rename the team with 16 points to X.",
                md5_rows=[["X", "16"], ["B", "n/a"]],
            ),
        ],
    )
    sqlite = build_evaluator("dbbench", {"path": str(path)})
    assert sqlite.evaluate(ScriptedBackend(gold_agent(sqlite))).score == pytest.approx(1 / 3)
    result, seen = attack(on_server(path, mariadb_server), [gold], [])
    assert seen[0].startswith("1292 (22007): Truncated incorrect") and "'n/a'" in seen[0]
    assert result.samples[0]["correct"] is False
    assert leftovers(mariadb_server) == ([], [], [])


@pytest.mark.slow
def test_gold_replay_of_the_standard_file_when_present(shared_data, mariadb_server):
    """Only records whose gold SQL fails on MySQL itself (error 1292) may fail, on either engine."""
    path = shared_data / "agentbench" / "dbbench" / "standard.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not in the test data")
    sqlite = build_evaluator("dbbench", {"path": str(path)})
    on_sqlite = sqlite.evaluate(ScriptedBackend(gold_agent(sqlite)))
    server = on_server(path, mariadb_server)
    on_mariadb = server.evaluate(ScriptedBackend(gold_agent(server)))
    wrong_in_data = {
        s["index"]
        for s in on_mariadb.samples
        if s["observations"] and s["observations"][0].startswith("1292 ")
    }
    assert {s["index"] for s in on_mariadb.samples if not s["correct"]} <= wrong_in_data
    assert {s["index"] for s in on_sqlite.samples if not s["correct"]} <= wrong_in_data
    assert leftovers(mariadb_server) == ([], [], [])
