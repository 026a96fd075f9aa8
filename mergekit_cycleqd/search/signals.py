"""Stopping a run gracefully: the first Ctrl-C or SIGTERM lets the children in flight finish.

Whatever is filed is whole (one ledger transaction per child), so stopping between two
filings loses nothing; the run continues with ``--resume``.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class GracefulStop:
    """First Ctrl-C or SIGTERM: finish and commit the children in flight, then stop.

    SIGTERM is what schedulers and ``docker stop`` send, so it takes the same path.
    A second signal aborts at once (what is committed stays committed).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning(
            "%s: finishing the children in flight, then stopping (a second signal aborts)",
            "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name,
        )

    def __exit__(self, *_exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
