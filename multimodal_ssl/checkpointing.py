"""Orbax checkpoints of the train state together with the data-iterator state.

Layout: ``<workdir>/checkpoints/<step>/{state, data, checksums.json}``. Orbax writes each
step to a temporary directory and renames it when complete, so a kill mid-save never
leaves a half-written checkpoint as the latest one. Saving the grain iterator state next
to the params is what makes a resumed run see exactly the batches it would have seen
without the interruption.

Integrity: once a step is committed, the SHA-256 of every file in it is written to
``checksums.json``. Restore tries the newest step first; one whose files changed, went
missing or cannot be read is moved to ``checkpoints/unusable/`` with a warning naming it,
and the previous one is tried (so retention never counts it, and no good checkpoint is
deleted for it). A checkpoint that is intact but does not fit the config (another model
size) is an error naming the first mismatching param and both shapes, not a fallback.

A save that the file system refuses (disk full, quota, permissions) raises
:class:`CheckpointWriteError` naming the step, the directory, the OS's reason and the newest
complete checkpoint, which is left as it was (orbax deletes old steps only after a newer one
is committed, and the half-written one stays in a temporary directory that restore ignores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

CHECKSUMS = "checksums.json"
UNUSABLE = "unusable"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message says which and what is left."""


def _os_error(error: BaseException) -> OSError | None:
    """The OSError that caused ``error`` (orbax may wrap it), if any."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def file_checksums(directory: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` but the checksums."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel == CHECKSUMS:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
            out[rel] = digest.hexdigest()
    return out


def verify(directory: str) -> str | None:
    """None if the files under ``directory`` match its ``checksums.json`` (or it has none
    yet), else what differs (the first changed, missing or extra file)."""
    path = os.path.join(directory, CHECKSUMS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        want = json.load(f)
    have = file_checksums(directory)
    for rel, digest in want.items():
        if rel not in have:
            return f"file {rel} is missing"
        if have[rel] != digest:
            return f"file {rel} changed (checksum mismatch)"
    extra = sorted(set(have) - set(want))
    return f"unexpected file {extra[0]}" if extra else None


def _first_mismatch(saved: Any, wanted: Any) -> str | None:
    """The first param path whose saved shape differs from the config's, as a message."""
    from multimodal_ssl.models.layout import path_str

    saved_shapes = {
        path_str(p): tuple(getattr(x, "shape", ()))
        for p, x in jax.tree_util.tree_leaves_with_path(saved)
    }
    for p, x in jax.tree_util.tree_leaves_with_path(wanted):
        key = path_str(p)
        if key not in saved_shapes:
            return f"param {key} {tuple(x.shape)} is not in the checkpoint"
        if saved_shapes[key] != tuple(x.shape):
            return f"param {key}: checkpoint {saved_shapes[key]}, config {tuple(x.shape)}"
    return None


class Checkpointer:
    """Saves the steps the loop asks for, keeps the newest ``keep``."""

    def __init__(self, workdir: str, *, keep: int):
        self.root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.root,
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._pending: int | None = None  # the step of a save not yet waited for
        self._failed = False  # a save was refused: close() only releases resources

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.root, str(step))

    def _write_checksums(self) -> None:
        """Checksums for the committed steps that have none yet (process 0: the workdir
        is shared by all hosts)."""
        if jax.process_index() != 0:
            return
        for step in self._manager.all_steps():
            directory = self._step_dir(step)
            path = os.path.join(directory, CHECKSUMS)
            if os.path.isdir(directory) and not os.path.exists(path):
                checksums = file_checksums(directory)
                with open(path + ".tmp", "w") as f:
                    json.dump(checksums, f, indent=0, sort_keys=True)
                os.replace(path + ".tmp", path)

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts an asynchronous save of ``state`` and the iterator position. The previous
        save (which has had the steps since to finish) is committed and checksummed
        first."""
        if step in self._manager.all_steps():
            return
        self.wait()
        self._pending = step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(data_iterator),
                ),
            )
        except Exception as e:  # noqa: BLE001 - re-raised, named when the OS refused
            raise self._write_failed(e) from e

    def _write_failed(self, error: Exception) -> Exception:
        """``error`` of the pending save as a :class:`CheckpointWriteError` when the file
        system refused it (else unchanged)."""
        step, self._pending = self._pending, None
        self._failed = True
        os_error = _os_error(error)
        if os_error is None:
            return error
        self._manager.reload()
        complete = [s for s in self._manager.all_steps() if s != step]
        left = (
            f"the newest complete checkpoint, step {max(complete)}, is intact"
            if complete
            else "no complete checkpoint exists yet"
        )
        reason = os_error.strerror or str(os_error)
        return CheckpointWriteError(
            f"writing the checkpoint of step {step} to {self.root} failed ({reason}); {left}. "
            "Free disk space (or fix the directory's permissions) and run the same command "
            "to resume"
        )

    def _quarantine(self, step: int, problem: str) -> None:
        target = os.path.join(self.root, UNUSABLE, f"{step}-{int(time.time())}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(self._step_dir(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        logging.warning(
            "Checkpoint of step %d in %s is unusable (%s); moved it to %s and trying the "
            "previous one",
            step,
            self.root,
            problem,
            target,
        )
        self._manager.reload()

    def restore(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """Restores the newest usable checkpoint into ``abstract_state``'s shapes and
        shardings (see the module docstring). ``data_iterator`` is moved to the saved
        position in place. Returns ``(state, step)``, or None when there is none."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            problem = verify(self._step_dir(step))
            if problem is None:
                try:
                    restored = self._manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state),
                            data=grain.checkpoint.CheckpointRestore(data_iterator),
                        ),
                    )
                except Exception as e:  # noqa: BLE001 - any failure: find out which kind
                    problem = self._unfit_or_broken(step, abstract_state, e)
                else:
                    logging.info("Restored checkpoint of step %d", step)
                    return restored["state"], step
            self._quarantine(step, problem)
        return None

    def _unfit_or_broken(self, step: int, abstract_state: Any, error: Exception) -> str:
        """Raises ValueError when checkpoint ``step`` is readable but does not fit the
        config; else returns what broke (the caller moves it aside)."""
        try:
            saved = ocp.PyTreeCheckpointer().metadata(os.path.join(self._step_dir(step), "state"))
            saved_params = saved.item_metadata["params"]
        except Exception:  # noqa: BLE001 - unreadable metadata: a broken checkpoint
            saved_params = None
        if saved_params is not None:
            mismatch = _first_mismatch(saved_params, abstract_state.params)
            if mismatch:
                raise ValueError(
                    f"the checkpoint of step {step} in {self.root} does not fit this config: "
                    f"{mismatch}; resume with the config it was trained with (its "
                    f"config.json), or use another --workdir"
                ) from error
        return f"{type(error).__name__}: {str(error)[:300]}"

    def wait(self) -> None:
        """Blocks until pending saves are committed (and checksummed)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - re-raised, named when the OS refused
            raise self._write_failed(e) from e
        self._pending = None
        self._write_checksums()

    def close(self) -> None:
        """Blocks until pending saves are on disk (after a refused save: only releases
        orbax's threads, whose repeat of that error is not raised again)."""
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self._manager.close()
            except Exception as e:  # noqa: BLE001 - a refused save is reported already
                if not self._failed:
                    raise
                logging.warning("Closing the checkpoint manager after a refused save: %s", e)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``, for restoring into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
