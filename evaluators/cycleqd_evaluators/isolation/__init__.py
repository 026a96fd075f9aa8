"""The one isolation layer for untrusted model output: code, SQL side effects, shell sessions.

- ``process``: run one untrusted Python program (MBPP) in a bubblewrap sandbox holding only
  the interpreter, read-only, in fresh namespaces, under a never-used uid, with one cgroup
  for the whole run, rlimits and a wall-clock timeout (``run_python``, ``ProcessLimits``).
- ``shell`` / ``bwrap`` / ``docker``: a throw-away root file system with a live bash
  session for an agent that may reconfigure it (AgentBench OS tasks; ``Sandbox``).
- ``views``: the agent's and the judge's way into a bwrap sandbox; the judge's runs tools
  the agent cannot have changed.
- ``rootfs``: the OS sandbox's base root, built from Debian packages and cached.
- ``cgroups``: memory and process-count limits on a whole sandbox.
- ``channel``: the byte-capped, time-limited command channel into a shell.
- ``reaping``: kill-and-wait until a sandbox's last process is gone.

A fix to containment is made here once; evaluators only choose limits.
"""

from cycleqd_evaluators.isolation.channel import CommandResult
from cycleqd_evaluators.isolation.process import ProcessLimits, SandboxResult, run_python
from cycleqd_evaluators.isolation.shell import (
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxLimits,
)

__all__ = [
    "CommandResult",
    "ProcessLimits",
    "Sandbox",
    "SandboxBackend",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "run_python",
]
