"""DBBench records written by the tests themselves, in AgentBench's JSONL format.

Every expected outcome here comes from outside the code under test: answers
are written by hand, and each ``answer_md5`` is computed below from the table
as it must look after the change (AgentBench's formula: MD5 of the sorted
5-hex-digit MD5 prefixes of each row's non-NULL values joined by ',').
The records include the cases where MySQL and plain SQLite disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CITIES = (
    "Cities",
    ["City", "Country", "Population"],
    [
        ["Montréal", "Canada", "1,762,949"],
        ["Toronto", "Canada", "2,794,356"],
        ["Lyon", "France", "513,275"],
    ],
)
PRIX = (
    "1952_British_Grand_Prix_0",
    ["Driver", "Note"],
    [
        ["Alberto Ascari", "won"],
        ["Nino Farina", "second"],
    ],
)
SCORES = ("Scores", ["Team", "Points"], [["A", "16"], ["B", "16.0"], ["C", "9"]])
SHORT = ("Short rows", ["a", "b", "c"], [["1", "x"], [], ["3", "y", "z"]])


def expected_md5(rows: list[list[str | None]]) -> str:
    row_hashes = sorted(
        hashlib.md5(",".join(v for v in row if v is not None).encode()).hexdigest()[:5]
        for row in rows
    )
    return hashlib.md5(",".join(row_hashes).encode()).hexdigest()


def record(table, kind, label, description, *, md5_rows=None, query=None, rows=None) -> dict:
    name, columns, table_rows = table
    result = {
        "description": description,
        "add_description": f"The name of this table is {name}, and the headers of this table are "
        + ",".join(columns)
        + ".",
        "type": [kind],
        "label": label,
        "table": {
            "table_name": name,
            "table_info": {
                "columns": [{"name": c, "type": "TEXT"} for c in columns],
                "rows": table_rows if rows is None else rows,
            },
        },
    }
    if md5_rows is not None:
        result["answer_md5"] = f"[('{expected_md5(md5_rows)}',)]"
    if query is not None:
        result["sql"] = {"query": query}
    return result


def cities_with(change: dict[str, list[str]]) -> list[list[str]]:
    return [change.get(row[0], row) for row in CITIES[2]]


# Hand-written: each record, a correct reply script and a near miss that must fail.
RECORDS = [
    record(
        CITIES,
        "counting",
        ["2"],
        "How many of the cities are in Canada?",
        query="SELECT COUNT(*) FROM Cities WHERE Country = 'Canada'",
    ),
    record(
        CITIES,
        "other",
        ["Lyon"],
        "Which city has a population of 513,275?",
        query="SELECT City FROM Cities WHERE Population = '513,275'",
    ),
    record(
        CITIES,
        "comparison",
        ["Montréal", "Toronto"],
        "Which cities are in Canada?",
        query="SELECT City FROM Cities WHERE Country = 'Canada'",
    ),
    record(
        CITIES,
        "INSERT",
        ["INSERT INTO Cities (City, Country, Population) VALUES ('Paris', 'France', '2,102,650')"],
        "Add Paris (France, population 2,102,650).",
        md5_rows=[*CITIES[2], ["Paris", "France", "2,102,650"]],
    ),
    # MySQL's default collation: 'Montreal' matches 'Montréal'.
    record(
        CITIES,
        "UPDATE",
        ["UPDATE Cities SET Population = '1,800,000' WHERE City = 'Montreal'"],
        "Montreal now has 1,800,000 inhabitants.",
        md5_rows=cities_with({"Montréal": ["Montréal", "Canada", "1,800,000"]}),
    ),
    # An unquoted name starting with digits, and a backslash escape in a literal.
    record(
        PRIX,
        "UPDATE",
        [
            "UPDATE 1952_British_Grand_Prix_0 SET Note = 'p2\\nfastest lap' WHERE Driver = 'Nino Farina'"
        ],
        "Note for Nino Farina: 'p2', newline, 'fastest lap'.",
        md5_rows=[["Alberto Ascari", "won"], ["Nino Farina", "p2\nfastest lap"]],
    ),
    # Case-insensitive, trailing spaces ignored by '='.
    record(
        PRIX,
        "UPDATE",
        ["UPDATE `1952_British_Grand_Prix_0` SET Note = 'pole' WHERE Driver = 'alberto ascari  '"],
        "Alberto Ascari also took pole.",
        md5_rows=[["Alberto Ascari", "pole"], ["Nino Farina", "second"]],
    ),
    # Text compared with a number compares numbers in MySQL ('16.0' = 16).
    record(
        SCORES,
        "UPDATE",
        ["UPDATE Scores SET Team = 'X' WHERE Points = 16"],
        "Rename every team with 16 points to X.",
        md5_rows=[["X", "16"], ["X", "16.0"], ["C", "9"]],
    ),
    # Rows with fewer values than columns (padded with NULL) and a row with none.
    record(
        SHORT,
        "UPDATE",
        ["UPDATE `Short rows` SET c = 'new' WHERE a = '1'"],
        "Set c to new where a is 1.",
        md5_rows=[["1", "x", "new"], [None, None, None], ["3", "y", "z"]],
    ),
    # Not loadable: more values than columns; then a record without a table.
    record(SCORES, "counting", ["3"], "How many teams?", rows=[["A", "16", "extra"]]),
    {"description": "No table here.", "type": ["counting"], "label": ["1"]},
    record(
        ("Empty", ["x"], []),
        "counting",
        ["0"],
        "How many rows does Empty have?",
        rows=None,
        query="SELECT COUNT(*) FROM Empty",
    ),
]
SKIPPED = {9: "has 3 values for 2 columns", 10: "missing or malformed field 'table'"}

# Correct work for each loadable record, written by hand (SQL, then the answer line).
HAND = {
    0: ("SELECT COUNT(*) FROM Cities WHERE Country = 'canada'", "['2']"),
    1: ("SELECT City FROM Cities WHERE Population LIKE '513%'", '["Lyon"]'),
    2: ("SELECT City FROM Cities WHERE Country LIKE 'CAN%'", '["Toronto", "Montréal"]'),
    3: ("INSERT INTO Cities VALUES ('Paris', 'France', '2,102,650')", "[]"),
    4: ("UPDATE Cities SET Population = '1,800,000' WHERE City LIKE 'MONTREAL'", "[]"),
    5: (
        "UPDATE 1952_British_Grand_Prix_0 SET Note = 'p2\\nfastest lap' WHERE Driver LIKE 'nino%'",
        "[]",
    ),
    6: ("UPDATE 1952_British_Grand_Prix_0 SET Note = 'pole' WHERE Driver = 'Alberto Ascari'", "[]"),
    7: ("UPDATE Scores SET Team = 'X' WHERE Points >= 10", "[]"),
    8: ("UPDATE `Short rows` SET c = 'new' WHERE b = 'x'", "[]"),
    11: ("SELECT COUNT(*) FROM Empty", "[0]"),
}
# Near misses: one detail wrong each; every one must be judged wrong.
NEAR_MISS = {
    0: ("SELECT 3", "['3']"),
    1: ("SELECT 1", '["Lyons"]'),
    2: ("SELECT 1", '["Toronto"]'),
    3: ("INSERT INTO Cities VALUES ('Paris', 'France', '2,102,651')", "[]"),
    4: ("UPDATE Cities SET Population = '1,800,000' WHERE City = 'Toronto'", "[]"),
    5: (
        "UPDATE 1952_British_Grand_Prix_0 SET Note = 'p2\\\\nfastest lap' WHERE Driver LIKE 'nino%'",
        "[]",
    ),
    6: ("UPDATE 1952_British_Grand_Prix_0 SET Note = 'Pole' WHERE Driver = 'Alberto Ascari'", "[]"),
    7: ("UPDATE Scores SET Team = 'X' WHERE Points = '16'", "[]"),
    8: ("UPDATE `Short rows` SET c = 'new' WHERE a IS NULL", "[]"),
    11: ("SELECT 1", "[1]"),
}


def write_records(path: Path, records: list[dict] = RECORDS) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def scripted(plan: dict[int, tuple[str, str]], evaluator):
    """An agent that runs plan[index]'s SQL, then gives plan[index]'s answer."""
    from cycleqd_evaluators.agentbench.dbbench_scripts import operation, task_lookup

    lookup = task_lookup(evaluator)

    def reply(prompt):
        task, turn = lookup(prompt)
        sql, answer = plan[task.index]
        if turn == 0:
            return operation(sql)
        return f"The result is in.\nAction: Answer\nFinal Answer: {answer}"

    return reply
