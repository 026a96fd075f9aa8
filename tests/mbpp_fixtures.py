"""Small coding problems written by the tests in MBPP's and evalplus's file formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

MBPP_PROBLEMS = [
    {
        "task_id": 1,
        "text": "Write a function to add two numbers.",
        "code": "def add(a, b):\n    return a + b",
        "test_setup_code": "",
        "test_list": [
            "assert add(1, 2) == 3",
            "assert add(-1, 1) == 0",
            "assert add(20, 22) == 42",
        ],
        "challenge_test_list": [],
    },
    {
        "task_id": 2,
        "text": "Write a function to find the shared elements of two lists.",
        "code": "def common(a, b):\n    return list(set(a) & set(b))",
        "test_setup_code": "",
        "test_list": [
            "assert set(common([1, 2, 3], [2, 3, 4])) == set([2, 3])",
            "assert set(common([1], [2])) == set()",
            "assert sorted(common([5, 6, 7], [7, 6])) == [6, 7]",
        ],
        "challenge_test_list": [],
    },
    {
        # The reference solution shadows a builtin name; the tests call the candidate's.
        "task_id": 3,
        "text": "Write a python function to find the sum of common divisors of two numbers.",
        "code": (
            "def sum(a, b):\n    total = 0\n    for i in range(1, min(a, b)):\n"
            "        if a % i == 0 and b % i == 0:\n            total += i\n    return total"
        ),
        "test_setup_code": "",
        "test_list": [
            "assert sum(10, 15) == 6",
            "assert sum(100, 150) == 93",
            "assert sum(4, 6) == 3",
        ],
        "challenge_test_list": [],
    },
    {
        # Setup code builds objects of the candidate's class; a float result within a tolerance.
        "task_id": 4,
        "text": "Write a function to find the height of a binary tree, and one for a circle's area.",
        "code": (
            "import math\nclass Node:\n    def __init__(self, value):\n        self.value = value\n"
            "        self.left = None\n        self.right = None\n"
            "def height(node):\n    if node is None:\n        return 0\n"
            "    return 1 + max(height(node.left), height(node.right))\n"
            "def area(r):\n    return math.pi * r * r"
        ),
        "test_setup_code": "root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)",
        "test_list": [
            "assert height(root) == 3",
            "assert math.isclose(area(2), 12.566, rel_tol=0.001)",
            "assert height(None) == 0",
        ],
        "challenge_test_list": [],
    },
]


def write_mbpp(folder: Path) -> Path:
    path = folder / "mbpp.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in MBPP_PROBLEMS), encoding="utf-8")
    return path


def plus_prompt(text: str, assertion: str) -> str:
    return f'"""\n{text}\n{assertion}\n"""\n'


PLUS_PROBLEMS = [
    {
        # In evalplus's tuple-conversion table (Mbpp/2) and set-comparison oracle.
        "task_id": "Mbpp/2",
        "prompt": plus_prompt(
            "Write a function to find the shared elements from the given two lists.",
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
        ),
        "canonical_solution": (
            "\ndef similar_elements(test_tup1, test_tup2):\n"
            "  return tuple(set(test_tup1) & set(test_tup2))\n"
        ),
        "entry_point": "similar_elements",
        "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]]],
        "plus_input": [[[1, 2, 3], [4, 5, 6]], [[11, 12, 14, 13], [17, 15, 14, 13]]],
        "atol": 0,
        "assertion": "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
    },
    {
        "task_id": "Mbpp/3",
        "prompt": plus_prompt(
            "Write a python function to identify non-prime numbers.",
            "assert is_not_prime(2) == False",
        ),
        "canonical_solution": (
            "\nimport math\ndef is_not_prime(n):\n    if n == 1:\n        return True\n"
            "    for i in range(2, int(math.sqrt(n)) + 1):\n        if n % i == 0:\n"
            "            return True\n    return False\n"
        ),
        "entry_point": "is_not_prime",
        "base_input": [[2], [10], [35], [37]],
        "plus_input": [[1], [4], [49], [97]],
        "atol": 0,
        "assertion": "assert is_not_prime(2) == False\nassert is_not_prime(10) == True",
    },
    {
        "task_id": "Mbpp/14",
        "prompt": plus_prompt(
            "Write a python function to find the volume of a triangular prism.",
            "assert find_Volume(10,8,6) == 240",
        ),
        "canonical_solution": "\ndef find_Volume(l,b,h) : \n    return ((l * b * h) / 2) \n",
        "entry_point": "find_Volume",
        "base_input": [[10, 8, 6], [3, 2, 2]],
        "plus_input": [[1.5, 2.5, 3.1], [0.1, 0.2, 0.3]],
        "atol": 0,
        "assertion": "assert find_Volume(10,8,6) == 240",
    },
]

# Right on the base inputs, wrong on three plus inputs (1, 4 and 49 are not prime).
NOT_PRIME_BASE_ONLY = "def is_not_prime(n):\n    return n in (10, 35)\n"


def write_plus(folder: Path, *, name: str = "MbppPlus.jsonl", problems=None) -> Path:
    path = folder / name
    text = "".join(json.dumps(p) + "\n" for p in (problems or PLUS_PROBLEMS))
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


HUMANEVAL_PROBLEMS = [
    {
        "task_id": "HumanEval/0",
        "prompt": (
            "def add_one(xs: list) -> list:\n"
            '    """Return the list with one added to every element.\n'
            '    >>> add_one([1, 2])\n    [2, 3]\n    """\n'
        ),
        "canonical_solution": "    return [x + 1 for x in xs]\n",
        "entry_point": "add_one",
        "base_input": [[[1, 2]], [[]]],
        "plus_input": [[[-5, 0, 5]]],
        "atol": 0,
    }
]
