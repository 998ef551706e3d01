"""``python -m tests.fault_child FAULT -- <multimodal_ssl.main flags>``: the training command
with one real fault injected into its own process (fault-injection tests).

FAULT:
  ``kill@step:N``   SIGKILL right after train step N has run (before its metrics, evals or
                    checkpoint);
  ``term@step:N``   SIGTERM (a preemption notice) right after train step N has run;
  ``kill@save:N``   SIGKILL inside the save of step N: orbax has started writing the
                    temporary directory but has not committed it;
  ``full@save:N``   every file write of this process fails from the save of step N on (the
                    file-size limit drops to 0 bytes: the OS answers EFBIG, as a full disk
                    answers ENOSPC; give the child pipes, not files, for its output);
  ``none``          no fault.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

from absl import app

from multimodal_ssl import checkpointing, train
from multimodal_ssl import main as cli


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after_step(n: int, sig: signal.Signals) -> None:
    compile_step = train.compile_step

    def patched(step_fn, state, batch):
        compiled, info = compile_step(step_fn, state, batch)

        def run(state, batch):
            out = compiled(state, batch)
            if int(out[0].step) == n:
                os.kill(os.getpid(), sig)
            return out

        return run, info

    train.compile_step = patched


def _at_save(n: int, fault: str) -> None:
    save = checkpointing.Checkpointer.save

    def patched(self, step, state, data_iterator):
        if step == n and fault == "full":
            self.wait()  # the previous save completes on a disk that still has room
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        save(self, step, state, data_iterator)
        if step == n and fault == "kill":
            _kill()

    checkpointing.Checkpointer.save = patched


def _install(fault: str) -> None:
    if fault == "none":
        return
    kind, _, rest = fault.partition("@")
    where, _, n = rest.partition(":")
    if kind in ("kill", "term") and where == "step":
        _after_step(int(n), signal.SIGKILL if kind == "kill" else signal.SIGTERM)
    elif where == "save" and kind in ("kill", "full"):
        _at_save(int(n), kind)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, sep, *rest = sys.argv[1:]
    assert sep == "--", sys.argv
    _install(fault)
    app.run(cli.main, argv=[sys.argv[0], *rest], flags_parser=cli._parse_flags)
