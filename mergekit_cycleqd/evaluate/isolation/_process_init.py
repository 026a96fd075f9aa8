"""Sandbox bootstrap: runs as a script (``python -I -S _process_init.py CONFIG_JSON``).

It is the first process inside the sandbox. With namespaces it is PID 1 of a
fresh PID, mount and network namespace (started by ``unshare``) and still root:
it hides the host's world-writable directories behind private tmpfs mounts,
makes the interpreter reachable, then forks the untrusted program under a
never-used uid with resource limits and waits for it. It must stay PID 1 and
keep its credentials: when it dies (the parent is killed on timeout, which
fires its parent-death signal) the kernel kills everything left in the
namespace, fork bombs included. Only the standard library is used, and the
module is never imported by the package.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import sys

MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
SETUP_FAILED = 125
# Directories any uid may write to on a Debian system; each gets a private tmpfs.
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def enc(value: str | None) -> bytes | None:
        return value.encode() if value is not None else None

    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data) if data else None):
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH):
        errno = ctypes.get_errno()
        raise OSError(errno, f"umount {target}: {os.strerror(errno)}")


def _closed_ancestor(path: str) -> str | None:
    """The shallowest ancestor of ``path`` that other users cannot traverse."""
    parts = os.path.abspath(path).strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        candidate = "/" + "/".join(parts[:depth])
        if not os.stat(candidate).st_mode & stat.S_IXOTH:
            return candidate
    return None


def _expose_interpreter(prefix: str, tmpfs_options: str) -> None:
    """Make ``prefix`` reachable for an unprivileged uid without exposing its siblings.

    Interpreters often live under a private home (e.g. a pyenv build in a 0700
    directory) and hard-code their library path there, so the program must see
    the prefix at its real path: the closed ancestor is replaced by a tmpfs that
    holds only a bind mount of the prefix.
    """
    closed = _closed_ancestor(prefix)
    if closed is None:
        return
    hold = "/tmp/.interpreter-hold"
    os.mkdir(hold, 0o700)
    _mount(closed, hold, None, MS_BIND | MS_REC)
    _mount("tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755," + tmpfs_options)
    relative = os.path.relpath(prefix, closed)
    target = os.path.join(closed, relative)
    os.makedirs(target, 0o755, exist_ok=True)
    _mount(os.path.join(hold, relative), target, None, MS_BIND | MS_REC)
    _umount(hold)
    os.rmdir(hold)


def _isolate_filesystem(config: dict, source: bytes) -> str:
    """Private tmpfs over the world-writable dirs; returns the (empty) work directory."""
    tmpfs_options = f"size={int(config['tmpfs_mb'])}m"
    for directory in WORLD_WRITABLE:
        if os.path.isdir(directory):
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777," + tmpfs_options)
    _expose_interpreter(config["interpreter_prefix"], tmpfs_options)
    workdir = "/tmp/sandbox"
    os.mkdir(workdir, 0o700)
    with open(os.path.join(workdir, "program.py"), "wb") as handle:
        handle.write(source)
    return workdir


def _limit(which: int, value: int | None) -> None:
    if value is not None:
        resource.setrlimit(which, (value, value))


def _become_program(config: dict, workdir: str) -> None:
    """In the forked child: limits, unprivileged identity, clean environment, exec."""
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    _limit(resource.RLIMIT_CPU, config["cpu_s"])
    _limit(resource.RLIMIT_FSIZE, config["file_size_bytes"])
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NOFILE, 256)
    uid = config["uid"]
    if uid is not None:
        os.chown(workdir, uid, uid)
        _limit(resource.RLIMIT_NPROC, config["max_processes"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(workdir)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
    }
    argv = [config["interpreter"], "-I", "-B", "program.py"]
    os.execve(config["interpreter"], argv, env)


def main() -> None:
    config = json.loads(sys.argv[1])
    try:
        with open(config["program"], "rb") as handle:
            source = handle.read()
        if config["namespaces"]:
            workdir = _isolate_filesystem(config, source)
        else:
            workdir = config["workdir"]
    except Exception as error:  # noqa: BLE001 - reported to the caller, who decides
        print(f"sandbox setup failed: {error}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    if not config["namespaces"]:
        _become_program(config, workdir)  # no PID namespace to hold: exec in place
    child = os.fork()
    if child == 0:
        try:
            _become_program(config, workdir)
        except BaseException as error:  # noqa: BLE001
            print(f"sandbox setup failed: {error}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:  # PID 1 reaps every orphan until the program itself ends
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
