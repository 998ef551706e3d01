"""Orbax checkpoints of the train state together with the data-iterator state.

Layout: ``<workdir>/checkpoints/<step>/{state, data}``. Orbax writes each step to a
temporary directory and renames it when complete, so a kill mid-save never leaves
a half-written checkpoint as the latest one. Saving the grain iterator state next
to the params is what makes a resumed run see exactly the batches it would have
seen without the interruption.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Saves every ``every_steps`` steps (and on demand), keeps the newest ``keep``."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int):
        self._every_steps = every_steps
        self._manager = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"),
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self._every_steps == 0

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts an asynchronous save of ``state`` and the iterator position."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
        )

    def restore(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """Restores the latest checkpoint into ``abstract_state``'s shapes/shardings.

        ``data_iterator`` is moved to the saved position in place. Returns
        ``(state, step)``, or None when the workdir holds no checkpoint.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        logging.info("Restored checkpoint of step %d", step)
        return restored["state"], step

    def wait(self) -> None:
        """Blocks until pending saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``, for restoring into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
