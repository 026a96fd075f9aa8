"""Memory and process-count limits for a sandbox through cgroups (v1 or v2).

Why cgroups and not rlimits: the sandbox runs as uid 0, and the kernel exempts
uid 0 from RLIMIT_NPROC, so only a pids cgroup stops a fork bomb; a memory
cgroup also charges the sandbox's tmpfs writes. When no writable cgroup tree
exists, the sandbox still runs (time limits and the namespace kill still hold)
and ``available`` says so.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

from cycleqd_evaluators.isolation.reaping import kill_until_gone

log = logging.getLogger(__name__)
_ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in a v1 hierarchy (``controller``) or v2 (``""``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controller == "" and controllers == ""):
            return path
    return None


class CgroupLimits:
    """A fresh cgroup per sandbox; ``procs_files`` are where the launcher writes its pid."""

    def __init__(self, memory_mb: int, pids: int):
        self.dirs: list[Path] = []
        self.procs_files: list[str] = []
        name = f"cycleqd-sandbox-{secrets.token_hex(6)}"
        try:
            if (_ROOT / "memory").is_dir() and (_ROOT / "pids").is_dir():
                self._make_v1(name, memory_mb, pids)
            elif (_ROOT / "cgroup.controllers").is_file():
                self._make_v2(name, memory_mb, pids)
        except OSError as error:
            log.warning(
                "cgroup limits unavailable (%s); fork bombs are only bounded by time", error
            )
            self.remove()
            self.procs_files = []

    @property
    def available(self) -> bool:
        return bool(self.procs_files)

    def _make_v1(self, name: str, memory_mb: int, pids: int) -> None:
        for controller, settings in (
            ("memory", {"memory.limit_in_bytes": str(memory_mb * 2**20)}),
            ("pids", {"pids.max": str(pids)}),
        ):
            parent = _own_path(controller) or "/"
            directory = _ROOT / controller / parent.lstrip("/") / name
            directory.mkdir()
            self.dirs.append(directory)
            for key, value in settings.items():
                (directory / key).write_text(value)
            swap = directory / "memory.memsw.limit_in_bytes"  # no swapping past the limit
            if controller == "memory" and swap.exists():
                swap.write_text(str(memory_mb * 2**20))
            self.procs_files.append(str(directory / "cgroup.procs"))

    def _make_v2(self, name: str, memory_mb: int, pids: int) -> None:
        parent = _ROOT / (_own_path("") or "/").lstrip("/")
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        missing = [c for c in ("memory", "pids") if c not in enabled]
        if missing:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        directory = parent / name
        directory.mkdir()
        self.dirs.append(directory)
        (directory / "memory.max").write_text(str(memory_mb * 2**20))
        if (directory / "memory.swap.max").exists():
            (directory / "memory.swap.max").write_text("0")
        (directory / "pids.max").write_text(str(pids))
        self.procs_files.append(str(directory / "cgroup.procs"))

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process in the cgroup until it is empty (forks race the first pass)."""
        deadline = time.monotonic() + timeout
        for directory in self.dirs:
            kill_file = directory / "cgroup.kill"
            if kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass

            def members(directory: Path = directory) -> list[int] | None:
                try:
                    return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
                except OSError:
                    return None

            kill_until_gone(members, deadline)

    def remove(self) -> None:
        for directory in reversed(self.dirs):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                log.warning("could not remove cgroup %s", directory)
        self.dirs = []
