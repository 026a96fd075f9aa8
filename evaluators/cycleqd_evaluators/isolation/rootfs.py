"""The OS sandbox's base root file system, built from packages and cached.

AgentBench builds its task images from a distribution image plus a few packages, so
nothing of the machine running the benchmark is inside. This module does the same
without Docker: ``mmdebstrap`` (Debian's tool for making a root file system from
packages) builds a minimal Debian root with the tools AgentBench's tasks use, once per
package list, under the cache folder (``$CYCLEQD_ROOTFS_CACHE``, else
``$CYCLEQD_CACHE/rootfs``, else ``~/.cache/mergekit-cycleqd/rootfs``). A finished root
is marked complete and never changed again; a build that dies leaves only a partial
folder that the next build removes. To use an existing Ubuntu root instead (e.g. an
exported AgentBench image), point the evaluator's ``rootfs`` option at its folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from mergekit_cycleqd.evaluate import SandboxError

log = logging.getLogger(__name__)

PACKAGES = (
    "bash",
    "coreutils",
    "procps",
    "python3",
    "findutils",
    "grep",
    "sed",
    "gawk",
    "passwd",
    "login",
    "util-linux",
    "tar",
    "gzip",
    "bzip2",
    "xz-utils",
    "file",
    "bc",
    "psmisc",
    "less",
)
"""On top of Debian's minbase (which has the essential packages): what AgentBench's OS tasks call."""

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"


def cache_root() -> Path:
    if "CYCLEQD_ROOTFS_CACHE" in os.environ:
        return Path(os.environ["CYCLEQD_ROOTFS_CACHE"])
    base = Path(os.environ.get("CYCLEQD_CACHE", Path.home() / ".cache" / "mergekit-cycleqd"))
    return base / "rootfs"


def rootfs_key(packages: tuple[str, ...], suite: str, mirror: str) -> str:
    """Folder name of a root: the suite plus a hash of everything that goes into it."""
    spec = json.dumps({"packages": sorted(set(packages)), "suite": suite, "mirror": mirror})
    return f"{suite}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def mmdebstrap_command(
    target: Path, *, packages: tuple[str, ...], suite: str, mirror: str
) -> list[str]:
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--include={','.join(sorted(set(packages)))}",
        suite,
        str(target),
        mirror,
    ]


def ensure_rootfs(
    packages: tuple[str, ...] = PACKAGES,
    *,
    suite: str = SUITE,
    mirror: str = MIRROR,
    cache: Path | None = None,
) -> Path:
    """The cached root for ``packages``, built first (minutes, printed as it goes) if missing.

    Raises:
        SandboxError: mmdebstrap is missing, we are not root, or the build failed.
    """
    folder = (cache or cache_root()) / rootfs_key(packages, suite, mirror)
    complete = folder.parent / f"{folder.name}.complete"  # beside the root: nothing extra inside
    if complete.exists():
        return folder
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        raise SandboxError(
            f"the OS sandbox's root file system {folder} is not built yet and cannot be built here: "
            "building needs root and mmdebstrap (Debian: apt-get install mmdebstrap); or set the "
            "option rootfs to the folder of an existing Ubuntu/Debian root"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per root, however many evaluators wait
        if complete.exists():
            return folder
        partial = folder.parent / f"{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        command = mmdebstrap_command(partial, packages=packages, suite=suite, mirror=mirror)
        log.warning("building the OS sandbox root (once, a few minutes): %s", " ".join(command))
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:  # its "I: ..." lines are the stages: show them as progress
            (log.warning if line.startswith("I:") else log.debug)("mmdebstrap: %s", line.rstrip())
            tail = (tail + [line])[-20:]
        if process.wait() != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise SandboxError(
                f"mmdebstrap failed (exit {process.returncode}): {''.join(tail)[-2000:]}"
            )
        partial.rename(folder)
        complete.write_text(
            json.dumps({"packages": sorted(set(packages)), "suite": suite, "mirror": mirror})
        )
    return folder
