"""Run untrusted Python (model-written code) so that it cannot harm the host.

Each run gets a separate process tree in fresh PID, mount and network
namespaces (``unshare``): no network at all (only a loopback that is down),
private tmpfs over every world-writable directory, an empty work directory,
a never-used uid (so it cannot write anything the host owns and its process
count limit is its own), setrlimit limits on memory, CPU time, file size and
process count, a clean environment and a wall-clock timeout after which the
whole tree is killed. This needs root (or CAP_SYS_ADMIN); where namespaces
cannot be created, programs still run with resource limits, a timeout and
their own directory, and a warning says what is missing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mergekit_cycleqd.evaluate.isolation.reaping import kill_until_gone

logger = logging.getLogger(__name__)

_BOOTSTRAP = Path(__file__).with_name("_process_init.py")
_UNSHARE_FLAGS = ("--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc")
_SETUP_FAILED = 125


@dataclass(frozen=True)
class ProcessLimits:
    """Per-run limits. ``cpu_s`` defaults to the wall-clock timeout rounded up, plus one."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int | None = None
    file_size_mb: int = 16
    max_processes: int = 32
    tmpfs_mb: int = 64
    max_output_chars: int = 4000


@dataclass
class SandboxResult:
    """What a run did. ``returncode`` is negative (-signal) when the program was killed."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error_summary(self) -> str | None:
        """A one-line reason for a failed run (None when it succeeded)."""
        if self.ok:
            return None
        if self.timed_out:
            return "timeout"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
        if self.returncode is not None and self.returncode > 128:
            return f"killed by signal {signal.Signals(self.returncode - 128).name}"
        return f"exit status {self.returncode}"


_mode_lock = threading.Lock()
_mode: str | None = None


def isolation_mode() -> str:
    """``"namespaces"`` when full isolation works here, else ``"none"`` (probed once)."""
    global _mode
    with _mode_lock:
        if _mode is None:
            _mode = _probe()
        return _mode


def _probe() -> str:
    if shutil.which("unshare") is None:
        reason = "the unshare tool is not installed"
    elif os.geteuid() != 0:
        reason = "namespaces and a separate uid need root (or CAP_SYS_ADMIN)"
    else:
        result = _run("pass", ProcessLimits(timeout_s=30), namespaces=True)
        if result.ok:
            return "namespaces"
        reason = f"unshare failed: {result.stderr.strip()[-300:] or result.returncode}"
    logger.warning(
        "sandbox: %s; untrusted code runs WITHOUT network, filesystem and PID isolation "
        "(resource limits and timeouts still apply)",
        reason,
    )
    return "none"


def run_python(source: str, limits: ProcessLimits | None = None) -> SandboxResult:
    """Execute ``source`` as a Python script in a sandbox and report what happened."""
    return _run(source, limits or ProcessLimits(), namespaces=isolation_mode() == "namespaces")


def _sandbox_uid() -> int:
    """A uid no account uses, fresh per run, so RLIMIT_NPROC counts only this run."""
    return random.SystemRandom().randrange(1_000_000_000, 2_000_000_000)


def _run(source: str, limits: ProcessLimits, namespaces: bool) -> SandboxResult:
    host_dir = Path(tempfile.mkdtemp(prefix="cqd-sandbox-"))
    try:
        return _run_in(host_dir, source, limits, namespaces)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def _run_in(host_dir: Path, source: str, limits: ProcessLimits, namespaces: bool) -> SandboxResult:
    uid = _sandbox_uid() if os.geteuid() == 0 else None
    if uid is not None and not namespaces and not _others_can_run(sys.base_prefix):
        # Without a mount namespace the interpreter cannot be exposed to another uid.
        uid = None
    workdir = host_dir / "work"
    workdir.mkdir(mode=0o700)
    program = (host_dir if namespaces else workdir) / "program.py"
    program.write_text(source, encoding="utf-8")
    if uid is not None and not namespaces:
        os.chmod(host_dir, 0o711)
        os.chmod(program, 0o644)
    interpreter = os.path.realpath(sys.executable)
    config = {
        "program": str(program),
        "namespaces": namespaces,
        "workdir": str(workdir),
        "uid": uid,
        "interpreter": interpreter,
        "interpreter_prefix": sys.base_prefix,
        "memory_bytes": limits.memory_mb * 2**20,
        "cpu_s": limits.cpu_s or math.ceil(limits.timeout_s) + 1,
        "file_size_bytes": limits.file_size_mb * 2**20,
        "max_processes": limits.max_processes,
        "tmpfs_mb": limits.tmpfs_mb,
    }
    argv = [interpreter, "-I", "-S", str(_BOOTSTRAP), json.dumps(config)]
    if namespaces:
        argv = ["unshare", *_UNSHARE_FLAGS, "--", *argv]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    stdout_path, stderr_path = host_dir / "stdout", host_dir / "stderr"
    start = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=host_dir,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        timed_out = False
        try:
            process.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Killing the group kills unshare, whose death kills the namespace's PID 1
            # and with it every process left inside (see _process_init).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    if uid is not None:
        _reap_uid(uid)
    duration = time.monotonic() - start
    returncode = None if timed_out else process.returncode
    return SandboxResult(
        returncode=returncode,
        stdout=_read_head(stdout_path, limits.max_output_chars),
        stderr=_read_tail(stderr_path, limits.max_output_chars),
        timed_out=timed_out,
        duration_s=duration,
    )


def _others_can_run(prefix: str) -> bool:
    """Whether every directory down to ``prefix`` is traversable by other users."""
    path = Path(prefix).resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _reap_uid(uid: int, patience_s: float = 10.0) -> None:
    """Kill whatever still runs under the run's uid and wait until it is gone.

    A killed PID namespace is torn down asynchronously; without namespaces this
    also catches processes that left the process group. The uid is unique to
    the run, so nothing else is touched.
    """

    def processes_of_uid() -> list[int]:
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        pids.append(int(entry.name))
                except FileNotFoundError:
                    continue
        return pids

    survivors = kill_until_gone(processes_of_uid, time.monotonic() + patience_s, interval_s=0.01)
    if survivors:
        logger.warning("sandbox: %d process(es) of uid %d outlived the run", len(survivors), uid)


def _read_head(path: Path, chars: int) -> str:
    with open(path, "rb") as handle:
        return handle.read(chars * 4).decode("utf-8", "replace")[:chars]


def _read_tail(path: Path, chars: int) -> str:
    """The end of stderr: a traceback's last line says why the program failed."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - chars * 4))
        return handle.read().decode("utf-8", "replace")[-chars:]
