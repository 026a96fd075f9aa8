"""Run untrusted Python (model-written code) so that it cannot harm the host.

Each run is one bubblewrap sandbox, built on the same pieces as the OS
sandbox (``bwrap`` plus ``cgroups``), so a containment fix is made once:

* fresh PID, IPC (no SysV shared memory outlives the run), network (no
  network, no abstract Unix sockets), UTS and cgroup namespaces;
* a root file system that is an empty tmpfs holding only what the interpreter
  needs, read-only: its executable, its standard library (site-packages
  hidden), libpython and the system library directories. No /etc, /var, /opt,
  /home, /root, /run, no checkout, no cache: host files and host Unix sockets
  are not reachable by path. ``/tmp`` and ``/dev/shm`` are private tmpfs;
* one memory + pids cgroup for the whole process tree (``memory_mb`` and
  ``max_processes`` hold for the sandbox, not per process), plus per-process
  rlimits (address space, CPU seconds, file size, open files, no core dumps);
* a never-used uid without capabilities, a clean environment, stdin from
  /dev/null and a wall-clock timeout after which the whole tree is killed.

This needs root and ``bwrap``. Elsewhere programs still run with rlimits, a
timeout and their own directory, and a warning says what is missing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cycleqd_evaluators.isolation.cgroups import CgroupLimits
from cycleqd_evaluators.isolation.reaping import kill_until_gone

logger = logging.getLogger(__name__)

_BOOTSTRAP = Path(__file__).with_name("_process_init.py")
_SETUP_FAILED = 125
_WORKDIR = "/tmp/sandbox"
_CGROUP_SLACK = 4
"""Processes of the sandbox machinery itself (sh, bwrap and its reaper) in the pids cgroup."""


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
    uid: int | None = None
    """The never-used uid the program ran under (None: the caller's own)."""

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
    """``"namespaces"`` when the bubblewrap sandbox works here, else ``"none"`` (probed once)."""
    global _mode
    with _mode_lock:
        if _mode is None:
            _mode = _probe()
        return _mode


def _probe() -> str:
    if shutil.which("bwrap") is None:
        reason = "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)"
    elif os.geteuid() != 0:
        reason = "the sandbox needs root (a separate uid, cgroups, mounts)"
    else:
        result = _run("pass", ProcessLimits(timeout_s=30), namespaces=True)
        if result.ok:
            return "namespaces"
        reason = f"bwrap failed: {result.stderr.strip()[-300:] or result.returncode}"
    logger.warning(
        "sandbox: %s; untrusted code runs WITHOUT network, filesystem, IPC and PID isolation "
        "and with per-process (not per-sandbox) memory limits (rlimits and timeouts still apply)",
        reason,
    )
    return "none"


def run_python(source: str, limits: ProcessLimits | None = None) -> SandboxResult:
    """Execute ``source`` as a Python script in a sandbox and report what happened."""
    return _run(source, limits or ProcessLimits(), namespaces=isolation_mode() == "namespaces")


def _sandbox_uid() -> int:
    """A uid no account uses, fresh per run, so RLIMIT_NPROC counts only this run."""
    return random.SystemRandom().randrange(1_000_000_000, 2_000_000_000)


def python_view() -> list[str]:
    """bwrap arguments for a read-only view of what this interpreter needs, and nothing else.

    The system library directories (shared libraries of the interpreter and of its
    extension modules), the interpreter, libpython and the standard library, each at
    its host path; site-packages is hidden behind an empty tmpfs.
    """
    args: list[str] = []
    for name in ("lib", "lib64", "lib32", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
        usr = Path("/usr") / name
        if usr.is_dir() and not usr.is_symlink():
            args += ["--ro-bind", str(usr), str(usr)]
    interpreter = os.path.realpath(sys.executable)
    args += ["--ro-bind", interpreter, interpreter]
    paths = sysconfig.get_paths()
    for stdlib_dir in sorted({paths["stdlib"], paths["platstdlib"]}):
        args += ["--ro-bind", stdlib_dir, stdlib_dir]
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and os.path.isdir(libdir):
        for library in sorted(Path(libdir).glob("libpython*.so*")):
            args += ["--ro-bind", str(library), str(library)]
    stdlib = Path(paths["stdlib"])
    for hidden in sorted({Path(paths["purelib"]), Path(paths["platlib"])}):
        if hidden.is_dir() and stdlib in hidden.parents:
            args += ["--tmpfs", str(hidden), "--remount-ro", str(hidden)]
    # bwrap creates missing parents 0700: make them traversable for the program's uid.
    bound = {Path(args[i + 2]) for i, a in enumerate(args) if a in ("--ro-bind", "--symlink")}
    parents = {p for target in bound for p in target.parents if p not in bound and p != Path("/")}
    dirs = [
        a
        for p in sorted(parents, key=lambda p: len(p.parts))
        for a in ("--perms", "0755", "--dir", str(p))
    ]
    return dirs + args


def bwrap_python_command(
    bwrap: str, *, tmpfs_mb: int, interpreter: str, bootstrap: str
) -> list[str]:
    """The bubblewrap command line that starts the bootstrap; see the module docstring."""
    size = str(tmpfs_mb * 2**20)
    return [
        bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        *python_view(),
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--size",
        size,
        "--tmpfs",
        "/tmp",
        "--perms",
        "1777",
        "--size",
        size,
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
        "--cap-add",
        "CAP_CHOWN",
        "--clearenv",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--chdir",
        "/",
        "--",
        interpreter,
        "-I",
        "-S",
        "-c",
        bootstrap,
    ]


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
    interpreter = os.path.realpath(sys.executable)
    config = {
        "workdir": _WORKDIR if namespaces else str(host_dir / "work"),
        "uid": uid,
        "interpreter": interpreter,
        "memory_bytes": limits.memory_mb * 2**20,
        "cpu_s": limits.cpu_s or math.ceil(limits.timeout_s) + 1,
        "file_size_bytes": limits.file_size_mb * 2**20,
        "max_processes": limits.max_processes,
    }
    if uid is not None and not namespaces:
        os.chmod(host_dir, 0o711)
    bootstrap = _BOOTSTRAP.read_text()
    cgroup: CgroupLimits | None = None
    if namespaces:
        argv = bwrap_python_command(
            shutil.which("bwrap") or "bwrap",
            tmpfs_mb=limits.tmpfs_mb,
            interpreter=interpreter,
            bootstrap=bootstrap,
        )
        cgroup = CgroupLimits(limits.memory_mb, limits.max_processes + _CGROUP_SLACK)
        # The shell joins the cgroup before it becomes bwrap: every descendant is counted.
        join = "".join(f"echo $$ > {shlex.quote(f)}; " for f in cgroup.procs_files)
        argv = ["sh", "-c", join + 'exec "$@"', "sh", *argv, json.dumps(config)]
    else:
        argv = [interpreter, "-I", "-S", "-c", bootstrap, json.dumps(config)]
    program_path = host_dir / "program.py"
    program_path.write_text(source, encoding="utf-8")
    stdout_path, stderr_path = host_dir / "stdout", host_dir / "stderr"
    start = time.monotonic()
    try:
        with (
            open(program_path, "rb") as program,
            open(stdout_path, "wb") as out,
            open(stderr_path, "wb") as err,
        ):
            process = subprocess.Popen(
                argv,
                stdin=program,
                stdout=out,
                stderr=err,
                cwd=host_dir,
                env={
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG": "C.UTF-8",
                },
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Killing the group kills bwrap, whose death kills the namespace's PID 1
                # and with it every process left inside; the cgroup catches the rest.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
    finally:
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
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
        uid=uid,
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
