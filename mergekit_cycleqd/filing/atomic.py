"""Outputs that are whole or absent: write into a temporary sibling, fsync, rename.

A rename within one folder is atomic, so after a crash at any moment a path either
holds the complete file (or folder) or the previous one, never a truncated one; a
resumed run therefore decides from whether the path exists, not from its contents.
Leftover temporaries start with ``.tmp-`` and are replaced on the next write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mergekit_cycleqd.filing.ledger import fsync_dir


def temporary_sibling(path: Path) -> Path:
    path = Path(path)
    return path.with_name(".tmp-" + path.name)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if path.is_dir():
        for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            fsync_dir(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def publish_path(temporary: Path, final: Path) -> Path:
    """fsync ``temporary`` (file or folder) and rename it onto ``final``, replacing it."""
    _fsync_tree(temporary)
    if final.is_dir() and temporary.is_dir():
        # a folder cannot be renamed over a non-empty one: move the old one aside first
        old = final.with_name(".old-" + final.name)
        _remove(old)
        os.replace(final, old)
        os.replace(temporary, final)
        _remove(old)
    else:
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(temporary, final)
    fsync_dir(final.parent)
    return final


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling to write into; it becomes ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(final)
    _remove(temporary)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    publish_path(temporary, final)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_path(Path(path)) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
