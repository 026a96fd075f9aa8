"""Plain-data transport of values between the sandbox and the judge (standard library only).

This file's source is pasted into the programs the sandbox runs, and imported by the
judge. It turns a value into tagged JSON only when its type is *exactly* a builtin
(``type(x) is int``), so whatever the judge decodes is plain data: an object of any other
class, a subclass of a builtin with a lying ``__eq__`` included, arrives as an opaque
marker that equals nothing else. The one exception is the standard library's dict
subclasses (``Counter``, ``OrderedDict``, ``defaultdict``), which MBPP's reference
solutions return: their items are read with ``dict``'s own methods and arrive as a dict.
"""

import json

_SCALARS = {type(None): "N", bool: "B", str: "S"}
_SEQUENCES = {list: "L", tuple: "T", set: "SET", frozenset: "FS"}
_DICTS = ("Counter", "OrderedDict", "defaultdict")
MAX_DEPTH = 200


def encode(value, depth=0):
    """A JSON-ready tagged form of ``value``; anything but exact builtins becomes ``["O", name]``."""
    kind = type(value)
    if depth > MAX_DEPTH:
        return ["O", "nesting deeper than " + str(MAX_DEPTH)]
    if kind in _SCALARS:
        return [_SCALARS[kind], value]
    if kind is int:
        return ["I", hex(value)]
    if kind is float:
        return ["F", value.hex()]
    if kind is complex:
        return ["C", [value.real.hex(), value.imag.hex()]]
    if kind is bytes:
        return ["Y", value.hex()]
    if kind in _SEQUENCES:
        return [_SEQUENCES[kind], [encode(item, depth + 1) for item in value]]
    if kind is dict or (isinstance(value, dict) and kind.__name__ in _DICTS):
        value = dict(dict.items(value))
        return ["D", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    return ["O", kind.__name__ if isinstance(kind.__name__, str) else "?"]


class Opaque:
    """A value that was not plain data (or an exception): equal only to itself."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "<" + self.name + ">"


class Raised(Opaque):
    """A call that raised instead of returning."""


def decode(tagged):
    """The plain value of an ``encode`` result (raises ValueError on anything malformed)."""
    if not (isinstance(tagged, list) and len(tagged) == 2 and isinstance(tagged[0], str)):
        raise ValueError("malformed value")
    tag, payload = tagged
    if tag == "N":
        return None
    if tag == "B" and type(payload) is bool:
        return payload
    if tag == "S" and type(payload) is str:
        return payload
    if tag == "I":
        return int(payload, 16)
    if tag == "F":
        return float.fromhex(payload)
    if tag == "C":
        return complex(float.fromhex(payload[0]), float.fromhex(payload[1]))
    if tag == "Y":
        return bytes.fromhex(payload)
    if tag in ("L", "T", "SET", "FS"):
        items = [decode(item) for item in payload]
        return {"L": list, "T": tuple, "SET": set, "FS": frozenset}[tag](items)
    if tag == "D":
        return {decode(k): decode(v) for k, v in payload}
    if tag == "O":
        return Opaque(str(payload))
    if tag == "X":
        return Raised(str(payload))
    raise ValueError("unknown tag " + repr(tag))


_NUMBERS = (bool, int, float)


def strict_equal(a, b):
    """``a == b`` with the same exact type at every level, numbers (bool, int, float) being
    one kind as in Python's own ``==`` (MBPP's reference solutions return 240.0 for 240)."""
    if type(a) is not type(b) and not (type(a) in _NUMBERS and type(b) in _NUMBERS):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    return a == b


def dumps(values):
    return json.dumps(values, separators=(",", ":"))
