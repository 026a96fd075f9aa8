"""Task selection syntax shared by the benchmark evaluators.

Recipes name tasks as a list whose items are single ids (``12``) or inclusive
ranges (``"11-510"``), so a split is one short line instead of 500 numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

IdSpec = int | str


def expand_ids(spec: Sequence[IdSpec], option: str) -> list[int]:
    """Expand ids and ``"a-b"`` ranges in order, without duplicates.

    ``option`` names the recipe option in error messages.
    """
    seen: dict[int, None] = {}
    for item in spec:
        for value in _expand_one(item, option):
            seen.setdefault(value, None)
    return list(seen)


def _expand_one(item: IdSpec, option: str) -> Iterable[int]:
    if isinstance(item, bool):
        raise ValueError(f"{option}: {item!r} is not an id or an 'a-b' range")
    if isinstance(item, int):
        return (item,)
    text = item.strip()
    low, dash, high = text.partition("-")
    try:
        if not dash:
            return (int(text),)
        first, last = int(low), int(high)
    except ValueError:
        raise ValueError(f"{option}: {item!r} is not an id or an 'a-b' range") from None
    if first > last:
        raise ValueError(f"{option}: range {item!r} is empty (start > end)")
    return range(first, last + 1)
