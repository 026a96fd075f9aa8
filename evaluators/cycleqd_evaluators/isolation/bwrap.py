"""Daemon-free sandbox: overlayfs over a read-only base root, inside bubblewrap.

Layout of one sandbox (all of it lives in a private mount namespace and a
tmpfs, so it vanishes when the sandbox's processes die):

* a tmpfs (``disk_mb``) holds the new root plus the overlay upper/work dirs;
* each top-level directory of the base root filesystem is an overlay whose
  lower layer is the read-only base, so ``useradd``, ``chmod`` or ``rm -rf /``
  only ever change the tmpfs;
* ``bubblewrap`` then pivots into that root with new pid, net, ipc, uts and
  cgroup namespaces (network: loopback only), a minimal ``/dev``, a fresh
  ``/proc`` whose kernel tunables (``/proc/sys``...) are read-only, no ``/sys``,
  no new privileges, and only Docker's default capabilities minus ``MKNOD``
  and ``AUDIT_WRITE`` (no ``SYS_ADMIN``: no mounts, no escaping the root);
* a fresh memory + pids cgroup bounds memory (tmpfs included) and processes.

The sandbox runs as uid 0 without a user namespace so that ``chown``/``su``
to arbitrary users work as in AgentBench's Docker containers. This needs the
caller to be root, and ``bwrap``, ``unshare`` and ``mount`` on the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from cycleqd_evaluators.isolation.cgroups import CgroupLimits
from cycleqd_evaluators.isolation.channel import OutputReader, ShellChannel
from cycleqd_evaluators.isolation.shell import (
    SANDBOX_PATH,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxLimits,
)
from cycleqd_evaluators.isolation.views import (
    JUDGE_PATH,
    judge_binds,
    judge_prepare_script,
    mount_proc_command,
    nsenter_prefix,
    view_command,
)

CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
)
"""Docker's default set minus MKNOD (device nodes would reach host disks) and AUDIT_WRITE."""

HOST_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "var", "opt")
"""When the base is the host's own ``/``, only these are shown (read-only, overlaid);
users' files, mounts and project folders stay hidden."""

EMPTY_DIRS = {
    "root": 0o700,
    "home": 0o755,
    "tmp": 0o1777,
    "run": 0o755,
    "mnt": 0o755,
    "media": 0o755,
    "srv": 0o755,
    "sys": 0o555,
}
"""Created empty (and writable) in every sandbox, unless the base provides them."""

_SPECIAL = {"proc", "dev", "sys"}
_READ_ONLY_PROC = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")


def root_entries(rootfs: Path) -> list[tuple[str, str, str]]:
    """(name, kind, detail) for each top-level entry: kind is overlay, symlink or empty."""
    host = rootfs.resolve() == Path("/")
    entries: list[tuple[str, str, str]] = []
    for child in sorted(rootfs.iterdir(), key=lambda p: p.name):
        name = child.name
        if name in _SPECIAL or (host and name not in HOST_SYSTEM_DIRS):
            continue
        if child.is_symlink():
            entries.append((name, "symlink", os.readlink(child)))
        elif child.is_dir():
            entries.append((name, "overlay", str(child)))
    present = {name for name, _, _ in entries}
    for name, mode in EMPTY_DIRS.items():
        if name not in present:
            entries.append((name, "empty", oct(mode)[2:]))
    return entries


def setup_script(
    workdir: Path, rootfs: Path, limits: SandboxLimits, procs_files: list[str], bwrap: list[str]
) -> str:
    """The POSIX sh run (as root, in a private mount namespace) that builds the root and execs
    bubblewrap. Kept as a pure function so the exact mounts can be unit-tested."""
    q = shlex.quote
    lines = ["set -eu"]
    lines += [f"echo $$ > {q(f)}" for f in procs_files]
    base = q(str(workdir))
    lines.append(f"mount -t tmpfs -o size={limits.disk_mb}m,mode=0755 cycleqd-sandbox {base}")
    lines.append(f"mkdir -p {base}/root {base}/upper {base}/work")
    for name, kind, detail in root_entries(rootfs):
        target = q(f"{workdir}/root/{name}")
        if kind == "symlink":
            lines.append(f"ln -s {q(detail)} {target}")
        elif kind == "empty":
            # a mount point, so the agent cannot swap it for a symlink the judge would follow
            lines.append(
                f"mkdir -p {target} && chmod {detail} {target} && mount --bind {target} {target}"
            )
        else:
            upper, work = q(f"{workdir}/upper/{name}"), q(f"{workdir}/work/{name}")
            options = q(
                f"lowerdir={detail},upperdir={workdir}/upper/{name},workdir={workdir}/work/{name}"
            )
            lines.append(f"mkdir -p {upper} {work} {target}")
            lines.append(f"mount -t overlay overlay -o {options} {target}")
    lines.append("exec " + " ".join(q(a) for a in bwrap))
    return "\n".join(lines) + "\n"


def bwrap_command(bwrap: str, new_root: str, hostname: str = "sandbox") -> list[str]:
    """The bubblewrap command line; the sandboxed program is the control shell (pid 1)."""
    command = [bwrap, "--bind", new_root, "/", "--dev", "/dev", "--proc", "/proc"]
    for path in _READ_ONLY_PROC:
        command += ["--ro-bind-try", path, path]
    command += [
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        hostname,
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--cap-drop",
        "ALL",
    ]
    for capability in CAPABILITIES:
        command += ["--cap-add", capability]
    command += [
        "--chdir",
        "/root",
        "--clearenv",
        "--setenv",
        "HOME",
        "/root",
        "--setenv",
        "USER",
        "root",
        "--setenv",
        "LOGNAME",
        "root",
        "--setenv",
        "PATH",
        SANDBOX_PATH,
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "TERM",
        "dumb",
        "--",
        "/bin/bash",
        "--noprofile",
        "--norc",
    ]
    return command


class BwrapSandbox(Sandbox):
    """One bubblewrap sandbox; see the module docstring for what it isolates."""

    def __init__(self, rootfs: Path, limits: SandboxLimits, bwrap: str, start_timeout: float):
        super().__init__()
        self._rootfs, self._bwrap = rootfs.resolve(), bwrap
        self._workdir = Path(tempfile.mkdtemp(prefix="cycleqd-sandbox-"))
        self._cgroup = CgroupLimits(limits.memory_mb, limits.pids)
        self._shells: list[subprocess.Popen[bytes]] = []
        script = setup_script(
            self._workdir,
            rootfs,
            limits,
            self._cgroup.procs_files,
            bwrap_command(bwrap, str(self._workdir / "root")),
        )
        self._process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._control = ShellChannel(self._process.stdin, OutputReader(self._process.stdout))
        try:
            hello = self._control.execute("true", start_timeout)
        except BaseException:
            self.close()
            raise
        if hello.exit_code != 0:
            self.close()
            raise SandboxError(
                f"the bubblewrap sandbox did not start: {hello.output.strip()[-2000:]}"
            )
        self._init_pid = _child_of(self._process.pid)
        # Over /proc of the outer mount namespace: bwrap started there reads /proc/<its pid>.
        self._proc = Path("/proc")
        mounted = subprocess.run(
            mount_proc_command(
                outer_pid=self._process.pid, init_pid=self._init_pid, proc=self._proc
            ),
            capture_output=True,
            text=True,
            timeout=start_timeout,
        )
        if mounted.returncode != 0:
            self.close()
            raise SandboxError(
                f"could not mount the sandbox's /proc: {mounted.stderr.strip()[-500:]}"
            )

    @property
    def control(self) -> ShellChannel:
        return self._control

    @property
    def limited(self) -> bool:
        """Whether memory and process limits are enforced (a cgroup was available)."""
        return self._cgroup.available

    def _spawn_view(self, view: list[str], wrapper: str) -> ShellChannel:
        """A bash in the sandbox's namespaces and cgroup, seeing the root through ``view``."""
        join = "".join(f"echo $$ > {shlex.quote(f)}; " for f in self._cgroup.procs_files)
        argv = [
            *nsenter_prefix(outer_pid=self._process.pid, init_pid=self._init_pid),
            *view,
            "/bin/bash",
            "--noprofile",
            "--norc",
            "-c",
            wrapper,
        ]
        process = subprocess.Popen(
            ["sh", "-c", join + 'exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._shells.append(process)
        assert process.stdin is not None and process.stdout is not None
        return ShellChannel(process.stdin, OutputReader(process.stdout))

    def _spawn_agent_shell(self, wrapper: str) -> ShellChannel:
        view = view_command(
            self._bwrap,
            root=self._workdir / "root",
            proc=self._proc,
            capabilities=CAPABILITIES,
            path_env=SANDBOX_PATH,
        )
        return self._spawn_view(view, wrapper)

    def _spawn_judge_shell(self, wrapper: str) -> ShellChannel:
        snapshot = self._workdir / "judge-etc"
        prepare = judge_prepare_script(
            root=self._workdir / "root", base=self._rootfs, snapshot_etc=snapshot
        )
        done = subprocess.run(
            ["nsenter", f"--mount=/proc/{self._process.pid}/ns/mnt", "--", "sh", "-c", prepare],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise SandboxError(
                f"could not prepare the judge's view: {done.stdout[-500:]}{done.stderr[-500:]}"
            )
        view = view_command(
            self._bwrap,
            root=self._workdir / "root",
            proc=self._proc,
            capabilities=CAPABILITIES,
            path_env=JUDGE_PATH,
            trusted_binds=judge_binds(self._rootfs, snapshot),
        )
        return self._spawn_view(view, wrapper)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.broken = True
        for process in [self._process, *self._shells]:
            try:
                os.killpg(process.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        self._cgroup.kill_all()
        for process in [self._process, *self._shells]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._cgroup.remove()
        self._control.close()
        try:
            self._workdir.rmdir()
        except OSError:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _child_of(parent: int) -> int:
    """The pid of ``parent``'s child (bwrap's: the sandbox's PID 1)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                return int(entry.name)
    raise SandboxError(f"the bubblewrap sandbox (pid {parent}) has no init process")


class BwrapBackend(SandboxBackend):
    """Starts :class:`BwrapSandbox` es over one base root filesystem."""

    name = "bwrap"

    def __init__(
        self,
        rootfs: str | Path = "/",
        limits: SandboxLimits | None = None,
        bwrap: str = "bwrap",
        start_timeout: float = 60.0,
    ):
        self.rootfs = Path(rootfs)
        self.limits = limits or SandboxLimits()
        self.start_timeout = start_timeout
        problems = bwrap_problems(self.rootfs, bwrap)
        if problems:
            raise SandboxError("the bwrap sandbox cannot run here: " + "; ".join(problems))
        self.bwrap = shutil.which(bwrap) or bwrap

    def launch(self, image: str = "default") -> BwrapSandbox:
        return BwrapSandbox(self.rootfs, self.limits, self.bwrap, self.start_timeout)


def bwrap_problems(rootfs: Path, bwrap: str = "bwrap") -> list[str]:
    """Why the bwrap backend cannot run here (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it needs root (overlay mounts and uid 0 with chown/setuid in the sandbox)")
    for tool in (bwrap, "unshare", "mount"):
        if shutil.which(tool) is None:
            problems.append(
                f"{tool!r} is not on PATH (Debian: apt-get install bubblewrap util-linux)"
            )
    if not rootfs.is_dir():
        problems.append(f"rootfs {str(rootfs)!r} is not a directory")
    elif any(c in str(rootfs.resolve()) for c in ",:"):
        problems.append(f"rootfs {str(rootfs)!r} contains ',' or ':' (overlayfs cannot mount it)")
    elif not (rootfs / "bin" / "bash").exists() and not (rootfs / "usr" / "bin" / "bash").exists():
        problems.append(f"rootfs {str(rootfs)!r} has no /bin/bash")
    return problems
