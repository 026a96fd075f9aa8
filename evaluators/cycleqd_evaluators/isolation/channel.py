"""Talk to a long-lived shell over pipes, one command at a time.

A shell inside a sandbox is driven through plain pipes (no TTY): we write one
line of bash, the shell runs it and prints a marker with a fresh random nonce,
and a reader thread collects everything up to that marker. Pipes are read on
a thread so a command that floods its output (``yes``) or never ends cannot
block the caller; the buffer keeps the head and the tail of a flood only.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 16 * 1024
_DROPPED = b"\n[... output dropped ...]\n"


def bash_quote(text: str) -> str:
    """Quote any text as one bash word ($'...' with hex escapes), NUL bytes dropped.

    Why not shlex.quote: commands travel as ONE line to a shell reading a pipe,
    so newlines must be escaped too; $'...' keeps the line free of raw newlines.
    """
    out = ["$'"]
    for byte in text.replace("\0", "").encode("utf-8", "surrogateescape"):
        char = chr(byte)
        if byte < 128 and (char.isalnum() or char in ' _-+=.,:/@%^*()[]{}<>|&;!?#~`"$'):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    out.append("'")
    return "".join(out)


def new_marker() -> str:
    """A marker no command output will contain by accident."""
    return f"__CQD_{secrets.token_hex(8)}__"


@dataclass
class CommandResult:
    """What one command printed (stdout and stderr interleaved) and how it ended."""

    output: str
    exit_code: int | None
    timed_out: bool = False
    shell_exited: bool = False


class OutputReader:
    """Reads a pipe on a daemon thread into a bounded buffer."""

    def __init__(self, stream: BinaryIO | int):
        self._fd = stream if isinstance(stream, int) else stream.fileno()
        self._buf = bytearray()
        self._truncated = False
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buf += chunk
                limit = _HEAD_BYTES + len(_DROPPED) + 2 * _TAIL_BYTES
                if len(self._buf) > limit:
                    # Keep the original head, a note, and the newest tail (where markers appear).
                    self._buf = self._buf[:_HEAD_BYTES] + _DROPPED + self._buf[-_TAIL_BYTES:]
                self._cond.notify_all()

    @property
    def eof(self) -> bool:
        with self._cond:
            return self._eof and not self._buf

    def read_until(
        self, pattern: re.Pattern[bytes], timeout: float
    ) -> tuple[bytes, re.Match[bytes] | None]:
        """Consume and return the bytes before ``pattern`` and its match.

        On timeout or end of stream, everything read so far is consumed and the
        match is None.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = bytes(self._buf)  # a match must not see the buffer change
                match = pattern.search(snapshot)
                if match:
                    before = snapshot[: match.start()]
                    del self._buf[: match.end()]
                    return before, match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    before = bytes(self._buf)
                    self._buf.clear()
                    return before, None
                self._cond.wait(remaining)

    def drain(self) -> bytes:
        """Consume whatever has arrived so far."""
        with self._cond:
            data = bytes(self._buf)
            self._buf.clear()
            return data

    def join(self, timeout: float = 1.0) -> None:
        self._thread.join(timeout)


class ShellChannel:
    """A bash process reading commands from ``writer`` and printing to ``reader``."""

    def __init__(self, writer: BinaryIO, reader: OutputReader):
        self.writer = writer
        self.reader = reader
        self._lock = threading.Lock()

    def send(self, line: str) -> bool:
        """Write one command line; False when the shell's input is closed."""
        try:
            self.writer.write(line.encode("utf-8", "surrogateescape") + b"\n")
            self.writer.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def execute(
        self, command_line: str, timeout: float, exit_marker: bytes | None = None
    ) -> CommandResult:
        """Run one line of bash; its output runs until a status marker is printed.

        ``exit_marker`` is what the shell's wrapper prints when the shell itself
        exits (an agent typing ``exit``), so we need not wait for a timeout.
        """
        marker = new_marker()
        alternatives = [re.escape(f"\n{marker}").encode() + rb"(-?\d+)\n"]
        if exit_marker is not None:
            alternatives.append(re.escape(exit_marker))
        pattern = re.compile(b"|".join(alternatives))
        with self._lock:
            line = f"{command_line}; printf '\\n%s%d\\n' {marker} \"$?\""
            if not self.send(line):
                return CommandResult("", None, shell_exited=True)
            before, match = self.reader.read_until(pattern, timeout)
        text = before.decode("utf-8", "replace")
        if match is None:
            return CommandResult(
                text, None, timed_out=not self.reader.eof, shell_exited=self.reader.eof
            )
        if match.group(1) is None:
            return CommandResult(text, None, shell_exited=True)
        return CommandResult(text, int(match.group(1)))

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass
