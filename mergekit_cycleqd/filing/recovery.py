"""Recovering a damaged ledger from its periodic backup (``mergekit-cycleqd recover RUN``).

The backup is written by SQLite's online backup API, so it is always a consistent
ledger as it stood after some filed child. Restoring it loses only the children filed
since; ``--resume`` redoes them, and since every generation is deterministic given the
ledger, the resumed run ends with the ledger an undamaged run would have.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from mergekit_cycleqd.errors import LedgerError
from mergekit_cycleqd.filing.ledger import BACKUP_NAME, Ledger, fsync_dir


def recover_ledger(path: Path) -> tuple[Path, int]:
    """Replace a damaged ledger by its backup; the damaged files are kept, renamed.

    Returns where the damaged ledger went and how many models the restored one holds.
    The caller holds the run folder's lock.
    """
    path = Path(path)
    backup = path.with_name(BACKUP_NAME)
    if not backup.exists():
        raise LedgerError(f"{backup} does not exist: there is nothing to recover {path} from")
    with Ledger(backup, read_only=True) as source:
        count = source.count()
        kept = path.with_name(f"ledger.damaged-{int(time.time())}.sqlite")
        for suffix in ("", "-wal", "-shm"):
            damaged = path.with_name(path.name + suffix)
            if damaged.exists():
                os.replace(damaged, kept.with_name(kept.name + suffix))
        temporary = path.with_name(path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        target = sqlite3.connect(temporary)
        try:
            source.backup_into(target)
        finally:
            target.close()
        os.replace(temporary, path)
        fsync_dir(path.parent)
    return kept, count
