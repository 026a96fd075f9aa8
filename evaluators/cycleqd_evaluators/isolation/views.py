"""The two ways into a running bubblewrap sandbox: the agent's view and the judge's view.

Both are a ``bwrap`` started from the host inside the sandbox's PID, network, IPC and
UTS namespaces (``nsenter``), over the sandbox's own root, with the same capabilities,
so the agent's shell and the judge's shell have the same shape (``bwrap`` plus a bash)
and see the same processes: a task that counts processes gets the same number in both.

The judge's view differs in what it executes and how it links: every system directory
holding programs, libraries or the interpreter's modules (``/usr/bin``, ``/usr/lib``,
``/usr/local/lib``...) is a read-only bind of the pristine base root, and ``/etc`` is a
read-only snapshot of the agent's ``/etc`` in which the dynamic loader's files
(``ld.so.preload``, ``ld.so.cache``) and ``/etc/alternatives`` come from the base. What
the agent planted in ``/usr/local/bin`` (not on the judge's PATH) or elsewhere on its PATH, a replaced ``/usr/bin``
file in its writable layer or a preload library cannot run in place of a judge tool.
The agent's data (``/root``, ``/home``, ``/var``, ``/tmp``, users in ``/etc/passwd``...)
is what the judge reads.
"""

from __future__ import annotations

import shlex
from pathlib import Path

TRUSTED_DIRS = (
    "bin",
    "sbin",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib32",
    "usr/lib64",
    "usr/libx32",
    "usr/libexec",
    "usr/share",
    "usr/local/lib",
)
"""Where programs, libraries and interpreter modules live: the judge gets the base's copy.
``/usr/local/bin`` and ``/usr/local/sbin`` stay the agent's (a task may count what the agent
put there) but are not on the judge's PATH."""

TRUSTED_ETC = ("ld.so.cache", "alternatives")
"""Files of the agent's /etc replaced by the base's in the judge's snapshot (and
``ld.so.preload``, which is removed)."""

JUDGE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_READ_ONLY_PROC = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")


def nsenter_prefix(*, outer_pid: int, init_pid: int) -> list[str]:
    """Enter the mount namespace that holds the sandbox's root and the sandbox's other ones."""
    return [
        "nsenter",
        f"--mount=/proc/{outer_pid}/ns/mnt",
        f"--pid=/proc/{init_pid}/ns/pid",
        f"--net=/proc/{init_pid}/ns/net",
        f"--ipc=/proc/{init_pid}/ns/ipc",
        f"--uts=/proc/{init_pid}/ns/uts",
        "--",
    ]


def view_command(
    bwrap: str,
    *,
    root: Path,
    proc: Path,
    capabilities: tuple[str, ...],
    path_env: str,
    trusted_binds: list[tuple[str, str]] | None = None,
) -> list[str]:
    """bwrap over ``root`` (the sandbox's live root) with ``trusted_binds`` laid read-only on top."""
    command = [bwrap, "--bind", str(root), "/"]
    for source, target in trusted_binds or []:
        command += ["--ro-bind", source, target]
    # bwrap's own --proc would show the host's processes here (it does not unshare the PID
    # namespace): bind the sandbox's procfs, mounted by ``mount_proc_script``, instead.
    command += ["--dev", "/dev", "--bind", str(proc), "/proc"]
    for path in _READ_ONLY_PROC:
        command += ["--ro-bind-try", f"{proc}{path[len('/proc') :]}", path]
    command += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for capability in capabilities:
        command += ["--cap-add", capability]
    return command + [
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
        path_env,
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "TERM",
        "dumb",
        "--",
    ]


def mount_proc_command(*, outer_pid: int, init_pid: int, proc: Path) -> list[str]:
    """Mount a procfs of the sandbox's PID namespace at ``proc`` in its outer mount namespace."""
    return [
        "nsenter",
        f"--mount=/proc/{outer_pid}/ns/mnt",
        f"--pid=/proc/{init_pid}/ns/pid",
        "--",
        "mount",
        "-t",
        "proc",
        "proc",
        str(proc),
    ]


def judge_binds(base: Path, snapshot_etc: Path) -> list[tuple[str, str]]:
    """(source, target) read-only binds of the judge's view: the base's system dirs, its /etc."""
    binds = []
    for name in TRUSTED_DIRS:
        source = base / name
        if source.is_dir() and not source.is_symlink():
            binds.append((str(source), "/" + name))
    binds.append((str(snapshot_etc), "/etc"))
    return binds


def judge_prepare_script(*, root: Path, base: Path, snapshot_etc: Path) -> str:
    """POSIX sh, run with the host's tools in the sandbox's outer mount namespace.

    Snapshots the agent's /etc with the loader's files taken from the base, and puts the
    base's top-level symlinks (``/bin -> usr/bin``...) back where the agent replaced them.
    """
    q = shlex.quote
    lines = [
        "set -eu",
        f"rm -rf {q(str(snapshot_etc))}",
        f"cp -a {q(str(root / 'etc'))} {q(str(snapshot_etc))}",
        f"rm -rf {q(str(snapshot_etc / 'ld.so.preload'))}",
    ]
    for name in TRUSTED_ETC:
        target = q(str(snapshot_etc / name))
        lines.append(f"rm -rf {target}")
        if (base / "etc" / name).exists():
            lines.append(f"cp -a {q(str(base / 'etc' / name))} {target}")
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        link = base / name
        if link.is_symlink():
            target, where = link.readlink(), q(str(root / name))
            lines.append(
                f'[ "$(readlink {where} || true)" = {q(str(target))} ] || '
                f"{{ rm -rf {where}; ln -s {q(str(target))} {where}; }}"
            )
    return "\n".join(lines) + "\n"
