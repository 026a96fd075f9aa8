"""A throw-away Linux system for one OS-interaction task.

Every sandbox has a *control* shell (runs the task's setup scripts, checkers
and reference solution, each as a fresh process with a timeout, like
``docker exec``) and an *agent* shell (one persistent bash the model types
into, restarted when a command times out or the model types ``exit``).
Backends differ only in how the system is started and how an agent shell is
spawned; everything that crosses the shell boundary is built here.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cycleqd_evaluators.isolation.channel import CommandResult, ShellChannel, bash_quote
from mergekit_cycleqd.evaluate import SandboxError

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GRACE_S = 10.0


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox (memory includes its tmpfs writes)."""

    memory_mb: int = 1024
    pids: int = 512
    disk_mb: int = 1024


class Sandbox(ABC):
    """One running throw-away system; use as a context manager or call close()."""

    def __init__(self) -> None:
        self._agent: ShellChannel | None = None
        self._agent_pgid: int | None = None
        self._judge: ShellChannel | None = None
        self._judge_pgid: int | None = None
        self._exit_marker = f"__CQD_EXIT_{secrets.token_hex(8)}__"
        self.broken = False

    # -- backend hooks -------------------------------------------------------------------
    @property
    @abstractmethod
    def control(self) -> ShellChannel:
        """The control shell (never handed to the agent)."""

    @abstractmethod
    def _spawn_agent_shell(self, wrapper: str) -> ShellChannel:
        """Start ``bash -c wrapper`` in a new session as the agent shell; return its channel."""

    @abstractmethod
    def close(self) -> None:
        """Kill every process of the sandbox and discard its file system."""

    # -- control side --------------------------------------------------------------------
    def run(
        self, script: str, args: Sequence[str] = (), language: str = "bash", timeout: float = 30.0
    ) -> CommandResult:
        """Run a script as a fresh process (stdin closed), with a hard time limit."""
        if language == "python":
            program = f"python3 -c {bash_quote(script)}"
        elif language == "bash":
            program = f"bash -c {bash_quote(script)} bash"
        else:
            raise ValueError(f"unknown script language {language!r} (expected 'bash' or 'python')")
        quoted_args = " ".join(bash_quote(a) for a in args)
        line = (
            f"( cd /root 2>/dev/null; exec timeout -s KILL {max(1, round(timeout))} {program} "
            f"{quoted_args} ) </dev/null 2>&1"
        )
        return self._control_execute(line, timeout + _GRACE_S)

    def start_background(self, script: str, timeout: float = 30.0) -> CommandResult:
        """Start a script detached (the task's ``start`` command); its output is discarded."""
        line = (
            f"( cd /root 2>/dev/null; setsid bash -c {bash_quote(script)} </dev/null >/dev/null "
            "2>&1 & )"
        )
        return self._control_execute(line, timeout)

    def _control_execute(self, line: str, timeout: float) -> CommandResult:
        if self.broken:
            return CommandResult("sandbox is no longer running", None, shell_exited=True)
        result = self.control.execute(line, timeout)
        if result.exit_code is None:
            # The control shell is the sandbox's lifeline: when it stops answering,
            # nothing later can be trusted (a fork bomb, a killed init...).
            self.broken = True
        return result

    # -- agent side ----------------------------------------------------------------------
    def shell(self, command: str, timeout: float = 30.0) -> CommandResult:
        """Run the agent's command in its persistent shell (cwd and variables persist)."""
        if self.broken:
            return CommandResult("", None, shell_exited=True)
        if self._agent is None:
            self._start_agent_shell(timeout)
        assert self._agent is not None
        result = self._agent.execute(
            f"eval -- {bash_quote(command)} </dev/null", timeout, self._exit_marker.encode()
        )
        if result.timed_out or result.shell_exited:
            self._stop_agent_shell()
        return result

    def _start_shell(
        self, spawn: Callable[[str], ShellChannel], timeout: float
    ) -> tuple[ShellChannel, int]:
        ready = f"__CQD_READY_{secrets.token_hex(8)}__"
        wrapper = (
            f"printf '\\n%s%s\\n' {ready} \"$$\"; cd /root 2>/dev/null; "
            f"bash --noprofile --norc; printf '\\n%s\\n' {self._exit_marker}"
        )
        channel = spawn(wrapper)
        # Output of a killed predecessor may still precede the banner: skip it.
        before, match = channel.reader.read_until(
            re.compile(re.escape(ready).encode() + rb"(\d+)\n"), timeout
        )
        if match is None:
            self.broken = True
            raise SandboxError(f"a shell in the sandbox did not start: {before[-500:]!r}")
        return channel, int(match.group(1))

    def _start_agent_shell(self, timeout: float) -> None:
        self._agent, self._agent_pgid = self._start_shell(self._spawn_agent_shell, timeout)

    def _stop_agent_shell(self) -> None:
        """Kill the agent shell's whole process group (a runaway loop, a fork bomb)."""
        self._kill_group(self._agent_pgid)
        self._agent_pgid = None
        self._agent = None

    def _kill_group(self, pgid: int | None) -> None:
        if pgid is not None and not self.broken:
            self._control_execute(f"kill -9 -- -{pgid} 2>/dev/null; true", 15.0)

    # -- judge side ----------------------------------------------------------------------
    def _spawn_judge_shell(self, wrapper: str) -> ShellChannel:
        """Start the judge's shell; backends that can, give it tools the agent cannot change."""
        return self._spawn_agent_shell(wrapper)

    def judge(
        self, script: str, args: Sequence[str] = (), language: str = "bash", timeout: float = 30.0
    ) -> CommandResult:
        """Run judge code (a check, the reference solution) once the agent is done.

        The agent's shell is stopped first and the code runs as one command of a fresh
        judge shell shaped like the agent's, so it sees the processes the agent's commands
        saw, and its output is only its own (not that of background jobs started earlier).
        """
        self._stop_agent_shell()
        if self.broken:
            return CommandResult("sandbox is no longer running", None, shell_exited=True)
        if self._judge is None:
            self._judge, self._judge_pgid = self._start_shell(self._spawn_judge_shell, timeout)
        if language == "python":
            command = " ".join(["python3", "-c", bash_quote(script), *map(bash_quote, args)])
        elif language == "bash":
            command = (
                script
                if not args
                else " ".join(["bash", "-c", bash_quote(script), "bash", *map(bash_quote, args)])
            )
        else:
            raise ValueError(f"unknown script language {language!r} (expected 'bash' or 'python')")
        result = self._judge.execute(
            f"eval -- {bash_quote(command)} </dev/null", timeout, self._exit_marker.encode()
        )
        if result.timed_out or result.shell_exited:
            self._kill_group(self._judge_pgid)
            self._judge, self._judge_pgid = None, None
        return result

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SandboxBackend(ABC):
    """Starts sandboxes of one kind."""

    name: str

    @abstractmethod
    def launch(self, image: str = "default") -> Sandbox:
        """Start a fresh sandbox; ``image`` is the task's ``create.local`` kind."""
