"""Graceful stops: SIGTERM (preemptible VMs, SLURM, Kubernetes) and SIGINT (Ctrl-C) ask
the training loop to finish its current step, write a checkpoint and exit 0, so the
same command resumes. A second SIGINT stops at once (KeyboardInterrupt).

With several processes every host must stop at the same step: SIGTERM is left to JAX's
preemption notifier and its sync point (``multihost_utils.reached_preemption_sync_point``,
checked every step without a host round trip); without that service, and for SIGINT,
the hosts agree at the steps whose metrics they fetch anyway (an all-gather of the
flag). A single process uses its own flag and needs no communication.
"""

from __future__ import annotations

import signal
import threading
import types
from typing import Any

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A context manager that turns SIGTERM / SIGINT into a request the loop polls with
    :meth:`should_stop` (the previous handlers are restored on exit)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        import jax

        signals = SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal_name = name
        logging.warning(
            "%s received: finishing this step and writing a checkpoint (Ctrl-C again to stop "
            "at once)",
            name,
        )

    def should_stop(self, step: int, *, metrics_step: bool) -> bool:
        """Whether to stop after ``step``: the same answer on every process.
        ``metrics_step``: the processes synchronise at this step anyway (metrics)."""
        import jax

        if jax.process_count() == 1:
            return self.signal_name is not None
        import numpy as np
        from jax.experimental import multihost_utils

        try:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "SIGTERM"
                return True
        except RuntimeError:  # no preemption service in this runtime
            pass
        if not metrics_step:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
        return bool(np.any(flags))
