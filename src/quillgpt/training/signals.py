"""Stop on SIGINT (Ctrl-C) or SIGTERM (``kill``, a cluster pre-empting) without losing work.

Inside :class:`GracefulStop` the first signal only sets a flag; the trainer checks it after every
optimiser step, saves a checkpoint and returns, so the run can be resumed with ``--resume``. A
second signal of the same kind is taken as "really stop now" and raises ``KeyboardInterrupt``.
SIGKILL cannot be caught: that case is what atomic checkpoints are for.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into a flag (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """Name of the signal received (``SIGINT``/``SIGTERM``), or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
