"""The OS sandboxes: command lines, containment of hostile agents, host left untouched."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cycleqd_evaluators.agentbench.os_protocol import NEW_PROBLEM
from cycleqd_evaluators.isolation.bwrap import (
    CAPABILITIES,
    EMPTY_DIRS,
    HOST_SYSTEM_DIRS,
    bwrap_command,
    root_entries,
    setup_script,
)
from cycleqd_evaluators.isolation.channel import bash_quote
from cycleqd_evaluators.isolation.docker import (
    docker_available,
    docker_exec_command,
    docker_run_command,
)
from cycleqd_evaluators.isolation.shell import SandboxLimits
from mergekit_cycleqd.evaluate import build_evaluator
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from tests import test_os_interaction
from tests.test_os_interaction import description_of, require_root_sandbox

packaged_rootfs = test_os_interaction.packaged_rootfs  # the shared session fixture

pytestmark = pytest.mark.timeout(300)


def test_bash_quote_round_trips_any_text():
    text = "a'b\"c\\d $HOME `x` \n\t\x01é ✓ %s !!"
    out = subprocess.run(
        ["bash", "-c", f"printf %s {bash_quote(text)}"], capture_output=True, check=True
    )
    assert out.stdout.decode() == text


def test_bwrap_command_isolates():
    command = bwrap_command("bwrap", "/new/root")
    joined = " ".join(command)
    for flag in (
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--clearenv",
    ):
        assert flag in command
    assert "--ro-bind-try /proc/sys /proc/sys" in joined
    assert command[command.index("--cap-drop") + 1] == "ALL"
    added = {command[i + 1] for i, a in enumerate(command) if a == "--cap-add"}
    assert added == set(CAPABILITIES)
    assert not added & {
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_SYS_MODULE",
        "CAP_SYS_PTRACE",
        "CAP_SYS_RAWIO",
    }
    assert command[:4] == ["bwrap", "--bind", "/new/root", "/"]


def test_setup_script_overlays_the_base(tmp_path):
    base = tmp_path / "base"
    (base / "usr/bin").mkdir(parents=True)
    (base / "etc").mkdir()
    (base / "proc").mkdir()
    (base / "bin").symlink_to("usr/bin")
    entries = root_entries(base)
    assert ("bin", "symlink", "usr/bin") in entries and (
        "usr",
        "overlay",
        str(base / "usr"),
    ) in entries
    assert not any(name == "proc" for name, _, _ in entries)
    script = setup_script(
        tmp_path / "w", base, SandboxLimits(disk_mb=77), ["/cg/procs"], ["bwrap", "x"]
    )
    assert "echo $$ > /cg/procs" in script
    assert f"mount -t tmpfs -o size=77m,mode=0755 cycleqd-sandbox {tmp_path}/w" in script
    assert (
        f"lowerdir={base}/usr,upperdir={tmp_path}/w/upper/usr,workdir={tmp_path}/w/work/usr"
        in script
    )
    assert f"ln -s usr/bin {tmp_path}/w/root/bin" in script
    assert script.rstrip().endswith("exec bwrap x")


def test_host_root_shows_only_system_dirs():
    names = {name for name, _, _ in root_entries(Path("/"))}
    assert names <= set(HOST_SYSTEM_DIRS) | set(EMPTY_DIRS)
    assert {"usr", "etc", "root", "tmp", "home"} <= names


def test_docker_command_lines():
    run = docker_run_command("docker", "box", "local-os/default", SandboxLimits(512, 100, 64))
    joined = " ".join(run)
    assert run[:2] == ["docker", "run"] and "local-os/default" in run
    for part in (
        "--network none",
        "--memory 512m",
        "--memory-swap 512m",
        "--pids-limit 100",
        "--name box",
        "--rm",
        "--security-opt no-new-privileges",
    ):
        assert part in joined
    assert docker_exec_command("docker", "box", ["bash"]) == [
        "docker",
        "exec",
        "--interactive",
        "--user",
        "root",
        "--workdir",
        "/root",
        "box",
        "bash",
    ]


def test_docker_sandbox_live():
    if not docker_available():
        pytest.skip("no Docker daemon (the daemon-free bwrap sandbox is tested instead)")
    from cycleqd_evaluators.isolation.docker import DockerBackend

    backend = DockerBackend()
    try:
        box = backend.launch()
    except Exception as error:  # the AgentBench image may be missing
        pytest.skip(f"docker image unavailable: {error}")
    with box:
        assert box.shell("echo hi").output == "hi\n"


def test_bwrap_sandbox_contains_privileges(tmp_path):
    require_root_sandbox()
    from cycleqd_evaluators.isolation.bwrap import BwrapBackend

    before = Path("/proc/sys/kernel/core_pattern").read_text()
    with BwrapBackend(limits=SandboxLimits(memory_mb=256, pids=64)).launch() as box:
        assert box.limited
        assert box.run("id -u").output == "0\n"
        assert box.run("echo x > /proc/sys/kernel/core_pattern").exit_code != 0
        assert box.run("mount -t tmpfs x /mnt").exit_code != 0
        assert box.run("mknod /tmp/disk b 8 0").exit_code != 0
        assert box.run(f"test -e {bash_quote(str(Path(__file__).resolve()))}").exit_code == 1
        assert box.run(f"test -e {bash_quote(str(tmp_path))}").exit_code == 1
        # users, permissions and su work as in a container
        assert box.run("useradd -m bob && su - bob -c whoami").output == "bob\n"
        # the shell keeps state between commands; floods are bounded
        box.shell("cd /etc && X=7")
        assert box.shell("echo $X; pwd").output == "7\n/etc\n"
        flood = box.shell("yes | head -c 5000000")
        assert (
            flood.exit_code == 0
            and len(flood.output) < 200_000
            and "output dropped" in flood.output
        )
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before
    assert "bob" not in Path("/etc/passwd").read_text()


HOSTILE = {
    "loop": "while true; do :; done",
    "fork bomb": ":(){ :|:& };:",
    "memory": "python3 -c 'b = bytearray(50 * 2**30)'; head -c 50G /dev/zero | tail | wc -c",
    "network": "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\"; "
    "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)\"",
    "escape": "rm -f {sentinel}; echo pwned > {sentinel}.new; rm -rf /var/tmp; echo pwned > /etc/passwd",
    "rm -rf /": "rm -rf --no-preserve-root / 2>/dev/null; ls /",
}


@pytest.mark.slow
def test_hostile_agents_are_contained_and_fail(tmp_path, packaged_rootfs):
    require_root_sandbox()
    token = secrets.token_hex(6)
    sentinel = Path(f"/var/tmp/cycleqd-sentinel-{token}")
    sentinel.write_text("keep me")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connections: list[object] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(listener.accept())
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    tasks = [
        {
            "description": f"Hostile {name} {token}: how many users are there?",
            "evaluation": {
                "check": [None, {"language": "python", "file": "check/integer-match.py"}],
                "example": "getent passwd | wc -l",
            },
        }
        for name in HOSTILE
    ]
    data = tmp_path / "hostile.json"
    data.write_text(json.dumps(tasks))
    commands = {
        t["description"]: HOSTILE[name]
        .replace("{port}", str(port))
        .replace("{sentinel}", str(sentinel))
        for t, name in zip(tasks, HOSTILE, strict=True)
    }

    def hostile(conversation):
        task = description_of(conversation)
        if conversation[-1]["content"].startswith(NEW_PROBLEM):
            return f"Act: bash\n```bash\n# {token}\n{commands[task]}\n```"
        return "Act: answer(not a number)"

    passwd = Path("/etc/passwd").read_text()
    ev = build_evaluator(
        "os_interaction",
        {
            "data": str(data),
            "sandbox": "bwrap",
            "command_timeout_s": 5,
            "max_rounds": 3,
            "memory_mb": 256,
            "pids_limit": 128,
        },
    )
    try:
        result = ev.evaluate(ScriptedBackend(hostile))
    finally:
        stop.set()
    assert result.score == 0.0
    assert [s["correct"] for s in result.samples] == [False] * len(HOSTILE)
    by_name = dict(zip(HOSTILE, result.samples, strict=True))
    assert "killed" in by_name["loop"]["transcript"][1]["content"]
    memory = by_name["memory"]["transcript"][1]["content"]
    # python's 50 GB request is refused; `tail` buffering 50 GB is OOM-killed in its cgroup
    # (wc then counts 0 bytes) long before the 5 s command timeout
    assert "MemoryError" in memory and memory.endswith("MemoryError\n0")
    # the bomb hits the pids limit (whether the next command sees "fork: retry" is timing)
    assert by_name["fork bomb"]["status"] == "completed" and by_name["fork bomb"]["rounds"] == 2
    # the host is untouched
    assert sentinel.read_text() == "keep me" and not Path(f"{sentinel}.new").exists()
    assert Path("/etc/passwd").read_text() == passwd and Path("/usr/bin/bash").exists()
    assert connections == []
    listener.close()
    sentinel.unlink()
    # no process of any sandbox survives
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if token.encode() in (proc / "cmdline").read_bytes():
                    leftovers.append(proc.name)
            except OSError:
                pass
    assert leftovers == []
    assert os.path.exists("/usr/bin/env")


@pytest.mark.slow
def test_the_packaged_root_holds_no_host_data(packaged_rootfs):
    from cycleqd_evaluators.isolation.bwrap import BwrapBackend

    token = secrets.token_hex(6)
    probes = [
        Path(f"/var/tmp/cqd-probe-{token}"),
        Path(f"/opt/cqd-probe-{token}"),
        Path(f"/var/lib/cqd-probe-{token}"),
    ]
    for probe, mode in zip(probes, (0o644, 0o644, 0o600), strict=True):
        probe.write_text("host data")
        probe.chmod(mode)
    checkout = Path(__file__).resolve()
    try:
        with BwrapBackend(
            packaged_rootfs, limits=SandboxLimits(memory_mb=256, pids=64)
        ).launch() as box:
            seen = box.shell(
                "for p in " + " ".join(bash_quote(str(p)) for p in [*probes, checkout]) + "; do "
                'test -e "$p" && echo "visible $p"; done; md5sum /etc/shadow /etc/passwd /etc/hostname 2>&1; '
                "ls /opt /var/lib | wc -l"
            ).output
    finally:
        for probe in probes:
            probe.unlink()
    assert "visible" not in seen
    for host_file in ("/etc/shadow", "/etc/passwd"):
        digest = hashlib.md5(Path(host_file).read_bytes()).hexdigest()  # noqa: S324 - a fingerprint
        assert digest not in seen
    assert all(not p.exists() for p in probes)
