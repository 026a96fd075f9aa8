"""The sandbox contains hostile programs and leaves the host untouched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cycleqd_evaluators.isolation import process
from cycleqd_evaluators.isolation.process import ProcessLimits, isolation_mode, run_python

FAST = ProcessLimits(timeout_s=3.0)


@pytest.fixture(scope="module")
def isolated() -> None:
    """Isolation needs root and unshare; without them skip (fail in CI)."""
    if isolation_mode() != "namespaces":
        message = "namespaces are not available to the sandbox here (needs root and unshare)"
        if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _sandbox_processes(result) -> list[int]:
    """Processes owned by the run's own uid (>= 1e9, unique to it), anywhere on the host."""
    assert result.uid is not None and result.uid >= 1_000_000_000
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == result.uid:
                    found.append(int(entry.name))
            except FileNotFoundError:
                pass
    return found


def test_program_runs_and_output_is_captured(isolated):
    result = run_python("import sys\nprint('hello')\nprint('oops', file=sys.stderr)", FAST)
    assert result.ok and result.returncode == 0
    assert result.stdout == "hello\n"
    assert result.stderr == "oops\n"
    assert result.error_summary() is None


def test_failing_assert_is_reported(isolated):
    result = run_python("assert 1 + 1 == 3", FAST)
    assert not result.ok
    assert result.returncode == 1
    assert result.error_summary() == "AssertionError"


def test_fresh_empty_directory_unprivileged_clean_environment(isolated, monkeypatch):
    monkeypatch.setenv("CQD_SECRET_TOKEN", "do-not-leak")
    source = (
        "import os\n"
        "print(sorted(os.listdir('.')))\n"
        "print(os.getuid() >= 10**9, os.getgid() >= 10**9, os.getgroups())\n"
        "print('CQD_SECRET_TOKEN' in os.environ, sorted(os.environ))\n"
        "print(os.getpid())\n"
    )
    result = run_python(source, FAST)
    assert result.ok, result.stderr
    listing, ids, env, pid = result.stdout.splitlines()
    assert listing == "['program.py']"
    assert ids == "True True []"
    assert env == "False ['HOME', 'LANG', 'PATH', 'TMPDIR']"
    assert pid == "2"  # PID 1 is the sandbox's init: a PID namespace of its own


def test_infinite_loop_is_killed_at_the_timeout(isolated):
    result = run_python("while True:\n    pass\n", ProcessLimits(timeout_s=1.0))
    assert result.timed_out and not result.ok
    assert result.error_summary() == "timeout"
    assert 1.0 <= result.duration_s < 3.0
    assert _sandbox_processes(result) == []


def test_fork_bomb_is_contained_and_cleaned_up(isolated):
    source = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = run_python(source, ProcessLimits(timeout_s=2.0, max_processes=16))
    assert not result.ok
    assert _sandbox_processes(result) == []
    assert subprocess.run(["true"], check=False).returncode == 0  # the host can still fork


def test_escaped_session_is_killed_with_the_sandbox(isolated):
    source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    result = run_python(source, FAST)
    assert result.ok
    assert _sandbox_processes(result) == []


def test_allocating_50_gb_fails_inside(isolated):
    result = run_python("block = bytearray(50 * 2**30)\n", FAST)
    assert not result.ok
    assert result.error_summary() == "MemoryError"


def test_no_network(isolated):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        result = run_python(source, FAST)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    assert not result.ok
    assert result.error_summary().startswith(("ConnectionRefusedError", "OSError"))


def test_cannot_write_or_delete_outside(isolated, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    escape = Path("/tmp") / f"cqd-escape-{uuid.uuid4().hex}"
    source = (
        "import os\n"
        "for action in (\n"
        f"    lambda: os.remove({str(victim)!r}),\n"
        f"    lambda: open({str(tmp_path / 'new.txt')!r}, 'w').write('x'),\n"
        f"    lambda: open({str(escape)!r}, 'w').write('x'),\n"
        "    lambda: open('/etc/cqd-escape', 'w').write('x'),\n"
        "):\n"
        "    try:\n"
        "        action()\n"
        "        print('done')\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__)\n"
    )
    result = run_python(source, FAST)
    assert result.ok, result.stderr
    assert "done" not in result.stdout.splitlines()[:2] + result.stdout.splitlines()[3:]
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    assert not escape.exists()  # /tmp inside is a private tmpfs
    assert not Path("/etc/cqd-escape").exists()


def test_huge_output_is_cut(isolated):
    result = run_python("import sys\nsys.stdout.write('x' * 100_000)\n", FAST)
    assert result.ok
    assert result.stdout == "x" * FAST.max_output_chars


def test_memory_limit_holds_for_the_whole_sandbox(isolated, monkeypatch):
    # Four processes of 100 MB each stay under a 256 MB per-process limit but not under
    # 256 MB for the sandbox: the memory cgroup kills some, so at most two can hold theirs.
    source = (
        "import os, time\n"
        "children = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (100 * 2**20)\n"
        "        time.sleep(1.5)\n"
        "        os._exit(0 if len(block) else 1)\n"
        "    children.append(pid)\n"
        "held = sum(os.waitpid(pid, 0)[1] == 0 for pid in children)\n"
        "print(held)\n"
    )
    created: list[Path] = []

    class RecordingCgroup(process.CgroupLimits):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.extend(self.dirs)

    monkeypatch.setattr(process, "CgroupLimits", RecordingCgroup)
    result = run_python(source, ProcessLimits(timeout_s=20.0, memory_mb=256))
    assert not result.ok or int(result.stdout) <= 2, result
    assert created and not any(d.exists() for d in created)  # the cgroup was used and removed
    assert _sandbox_processes(result) == []


def test_sysv_shared_memory_does_not_outlive_the_run(isolated):
    key = int.from_bytes(os.urandom(3), "big") + 1
    source = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"print(libc.shmget({key}, 4096, 0o1000 | 0o666))\n"  # IPC_CREAT
    )
    result = run_python(source, FAST)
    assert result.ok, result.stderr
    assert int(result.stdout) >= 0  # the segment was created, inside the sandbox's IPC namespace
    keys = [int(line.split()[0]) for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]
    assert key not in keys


def test_host_unix_sockets_are_unreachable(isolated, tmp_path):
    path = tmp_path / "server.sock"
    abstract = f"\0cqd-test-{uuid.uuid4().hex}"
    servers = []
    for address in (str(path), abstract):
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        server.listen(1)
        server.setblocking(False)
        servers.append(server)
    source = (
        "import socket\n"
        f"for address in ({str(path)!r}, {abstract!r}):\n"
        "    try:\n"
        "        socket.socket(socket.AF_UNIX).connect(address)\n"
        "        print('connected')\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__)\n"
    )
    try:
        result = run_python(source, FAST)
        for server in servers:
            with pytest.raises(BlockingIOError):
                server.accept()  # nothing ever connected
    finally:
        for server in servers:
            server.close()
    assert result.ok, result.stderr
    assert result.stdout.split() == ["FileNotFoundError", "ConnectionRefusedError"]


def test_host_files_are_not_visible(isolated, tmp_path):
    checkout_probe = Path(__file__).resolve().parent / f".probe-{uuid.uuid4().hex}"
    tmp_probe = tmp_path / "world-readable.txt"
    for probe in (checkout_probe, tmp_probe):
        probe.write_text("host secret")
        probe.chmod(0o644)
    readable = [
        str(checkout_probe),
        str(tmp_probe),
        str(Path(__file__).resolve()),
        "/etc/passwd",
        "/etc/shadow",
        str(Path.home() / ".cache"),
        "/var/lib",
        "/opt",
        "/home",
        "/run",
    ]
    source = (
        "import os\n"
        f"for path in {readable!r}:\n"
        "    print(os.path.exists(path))\n"
        "print(sorted(os.listdir('/')))\n"
        "import sys, pathlib\n"
        "print(any(pathlib.Path(sys.prefix, 'lib').glob('python3*/site-packages/*')))\n"
    )
    try:
        result = run_python(source, FAST)
    finally:
        checkout_probe.unlink()
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[: len(readable)] == ["False"] * len(readable)
    assert set(eval(lines[-2])) <= {
        "dev",
        "proc",
        "tmp",
        "usr",
        "lib",
        "lib64",
        "lib32",
        "libx32",  # noqa: S307
        "root" if str(Path(sys.executable).resolve()).startswith("/root") else "usr",
    }
    assert lines[-1] == "False"  # third-party packages are hidden too
    assert tmp_probe.read_text() == "host secret"


def test_the_filesystem_view_is_read_only(isolated):
    source = (
        "import os, sys\n"
        "for path in (sys.executable, os.__file__, '/usr/lib/cqd-probe', '/cqd-probe'):\n"
        "    try:\n"
        "        open(path, 'a').close()\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__)\n"
    )
    result = run_python(source, FAST)
    assert result.ok, result.stderr
    assert "wrote" not in result.stdout
    assert not Path("/usr/lib/cqd-probe").exists()


def test_degraded_mode_warns_and_still_runs(monkeypatch, caplog):
    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        assert process._probe() == "none"
    assert "bubblewrap (bwrap) is not installed" in caplog.text and "WITHOUT" in caplog.text
    result = process._run("print(6 * 7)", FAST, namespaces=False)
    assert result.ok and result.stdout == "42\n"
    failed = process._run("import sys\nsys.exit(3)", FAST, namespaces=False)
    assert failed.returncode == 3
