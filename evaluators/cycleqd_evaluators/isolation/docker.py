"""Docker sandbox, as AgentBench runs its OS tasks: one container per task.

Needs a reachable Docker daemon and the task images (AgentBench builds
``local-os/default`` and friends from its Dockerfiles). The container has no
network, a memory and a pids limit, and is removed on close. The control
shell and each agent shell are ``docker exec -i`` processes.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Mapping

from cycleqd_evaluators.isolation.channel import OutputReader, ShellChannel
from cycleqd_evaluators.isolation.shell import (
    SANDBOX_PATH,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxLimits,
)

DEFAULT_IMAGES = {"default": "local-os/default"}


def docker_run_command(docker: str, name: str, image: str, limits: SandboxLimits) -> list[str]:
    """``docker run`` for a detached, network-less, resource-limited task container."""
    return [
        docker,
        "run",
        "--detach",
        "--rm",
        "--name",
        name,
        "--network",
        "none",
        "--memory",
        f"{limits.memory_mb}m",
        "--memory-swap",
        f"{limits.memory_mb}m",
        "--pids-limit",
        str(limits.pids),
        "--security-opt",
        "no-new-privileges",
        "--workdir",
        "/root",
        "--env",
        f"PATH={SANDBOX_PATH}",
        "--env",
        "HOME=/root",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 3600; done",
    ]


def docker_exec_command(docker: str, name: str, argv: list[str]) -> list[str]:
    """``docker exec -i`` of ``argv`` in the task container, as root in /root."""
    return [docker, "exec", "--interactive", "--user", "root", "--workdir", "/root", name, *argv]


def docker_available(docker: str = "docker", timeout: float = 10.0) -> bool:
    """Whether a Docker daemon answers."""
    if shutil.which(docker) is None:
        return False
    try:
        return (
            subprocess.run([docker, "info"], capture_output=True, timeout=timeout).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


class DockerSandbox(Sandbox):
    """One task container."""

    def __init__(self, docker: str, image: str, limits: SandboxLimits, start_timeout: float):
        super().__init__()
        self._docker = docker
        self.name = f"cycleqd-os-{secrets.token_hex(6)}"
        self._agent_processes: list[subprocess.Popen[bytes]] = []
        started = subprocess.run(
            docker_run_command(docker, self.name, image, limits),
            capture_output=True,
            text=True,
            timeout=start_timeout,
        )
        if started.returncode != 0:
            raise SandboxError(f"docker run {image!r} failed: {started.stderr.strip()[-2000:]}")
        self._control_process = self._exec(["bash", "--noprofile", "--norc"])
        assert self._control_process.stdout is not None and self._control_process.stdin is not None
        self._control = ShellChannel(
            self._control_process.stdin, OutputReader(self._control_process.stdout)
        )

    def _exec(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            docker_exec_command(self._docker, self.name, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    @property
    def control(self) -> ShellChannel:
        return self._control

    def _spawn_agent_shell(self, wrapper: str) -> ShellChannel:
        process = self._exec(["setsid", "-w", "bash", "-c", wrapper])
        self._agent_processes.append(process)
        assert process.stdin is not None and process.stdout is not None
        return ShellChannel(process.stdin, OutputReader(process.stdout))

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.broken = True
        subprocess.run([self._docker, "rm", "--force", self.name], capture_output=True, timeout=60)
        for process in [self._control_process, *self._agent_processes]:
            process.kill()
            process.wait()


class DockerBackend(SandboxBackend):
    """Starts task containers; ``images`` maps a task's ``create.local`` kind to an image."""

    name = "docker"

    def __init__(
        self,
        images: Mapping[str, str] | None = None,
        limits: SandboxLimits | None = None,
        docker: str = "docker",
        start_timeout: float = 120.0,
    ):
        if not docker_available(docker):
            raise SandboxError(f"no Docker daemon answers `{docker} info`")
        self.images = {**DEFAULT_IMAGES, **(images or {})}
        self.limits = limits or SandboxLimits()
        self.docker = docker
        self.start_timeout = start_timeout

    def image_for(self, kind: str) -> str:
        try:
            return self.images[kind]
        except KeyError:
            raise SandboxError(
                f"no Docker image for task image kind {kind!r}; known: {sorted(self.images)} "
                "(option docker_images)"
            ) from None

    def launch(self, image: str = "default") -> DockerSandbox:
        return DockerSandbox(self.docker, self.image_for(image), self.limits, self.start_timeout)
