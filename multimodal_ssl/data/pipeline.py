"""grain input pipelines: the endless, shuffled, sharded, checkpointable training
loader and the ordered, finite eval pass. Both yield the same batch format:

  image: f32 [b, S, S, 3] in [-1, 1]    text: i32 [b, L] (right-padded)
  label: i32 [b]                        id:   i64 [b] (the source index)

Image preprocessing (value range) lives only in :func:`preprocess_image`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from multimodal_ssl.data.sources import Source
from multimodal_ssl.data.tokenizers import Tokenizer

# Threads reading (= generating) records ahead of batching, and how many records
# they keep ready. Generation holds the GIL most of the time: more threads than
# cores only add contention.
READ_THREADS = 2
READ_PREFETCH = 512


def preprocess_image(images: np.ndarray) -> np.ndarray:
    """uint8 [..., S, S, 3] -> float32 [..., S, S, 3] in [-1, 1] (x / 127.5 - 1)."""
    return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


class Collate:
    """Source records -> one batch of the batch format (grain ``Batch``'s ``batch_fn``).

    Works on the whole batch at once (one image conversion, one tokenizer call),
    which is cheaper than per-record transforms.
    """

    def __init__(self, tokenizer: Tokenizer, image_size: int):
        self.tokenizer = tokenizer
        self.image_size = image_size

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        for r in records:
            image = r["image"]
            if not (
                isinstance(image, np.ndarray)
                and image.dtype == np.uint8
                and image.shape == (self.image_size, self.image_size, 3)
            ):
                raise ValueError(
                    f"record id {r.get('id')!r}: image must be uint8 "
                    f"[{self.image_size}, {self.image_size}, 3], got "
                    f"{getattr(image, 'dtype', type(image).__name__)} "
                    f"{list(getattr(image, 'shape', []))}"
                )
        return {
            "image": preprocess_image(np.stack([r["image"] for r in records])),
            "text": self.tokenizer.encode([r["caption"] for r in records]),
            "label": np.array([r["label"] for r in records], np.int32),
            "id": np.array([r["id"] for r in records], np.int64),
        }


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")


def make_train_loader(
    source: Source,
    *,
    batch_size: int,
    seed: int,
    tokenizer: Tokenizer,
    image_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    num_epochs: int | None = None,
) -> grain.DataLoader:
    """The training loader of one process.

    The source is split into ``shard_count`` contiguous, equal shards (remainder
    dropped); this process reads shard ``shard_index``, shuffled with ``seed`` (a new
    order each epoch), for ``num_epochs`` epochs (None = forever), in batches of
    ``batch_size`` (incomplete last batch dropped).

    ``iter(loader)`` yields the batch format of this module (per-process batch) and
    supports ``get_state() -> bytes`` / ``set_state(bytes)`` (and orbax's
    ``grain.checkpoint.CheckpointSave/Restore``): a restored iterator continues with
    exactly the batches the saved one would have produced. ``worker_count`` > 0
    decodes in that many worker processes; a state restores only into a loader
    with the same worker count, source and sampler.
    """
    _check_int("batch_size", batch_size, 1)
    _check_int("shard_count", shard_count, 1)
    _check_int("worker_count", worker_count, 0)
    if not isinstance(shard_index, int) or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index: must be in [0, {shard_count}), got {shard_index!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed: the shuffle seed must be an int in [0, 2**32), got {seed!r}")
    if num_epochs is not None:
        _check_int("num_epochs", num_epochs, 1)
    per_shard = len(source) // shard_count
    if per_shard < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} exceeds the {per_shard} examples of each of the "
            f"{shard_count} shards of {source!r}"
        )
    if worker_count and not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags (e.g. its profiling switch); outside
        # an absl app (tests, notebooks) use their defaults instead of failing.
        flags.FLAGS.mark_as_parsed()
    shard_options = grain.sharding.ShardOptions(
        shard_index=shard_index, shard_count=shard_count, drop_remainder=True
    )
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=True,
        num_epochs=num_epochs,
        seed=seed,
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[
            grain.transforms.Batch(
                batch_size=batch_size,
                drop_remainder=True,
                batch_fn=Collate(tokenizer, image_size),
            ),
        ],
        worker_count=worker_count,
        shard_options=shard_options,
        read_options=grain.ReadOptions(
            num_threads=READ_THREADS, prefetch_buffer_size=READ_PREFETCH
        ),
    )


class EvalBatches:
    """One ordered pass over ``source[:num_examples]`` in batches of ``batch_size``
    (the last one may be smaller); iterable any number of times, each pass identical.

    Attributes: ``num_examples`` (the true number of examples in the pass);
    ``len()`` is the number of batches.
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        tokenizer: Tokenizer,
        image_size: int,
        max_examples: int | None = None,
    ):
        _check_int("batch_size", batch_size, 1)
        if max_examples is not None:
            _check_int("max_examples", max_examples, 1)
        self.source = source
        self.batch_size = batch_size
        self.num_examples = len(source) if max_examples is None else min(max_examples, len(source))
        self._collate = Collate(tokenizer, image_size)

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.num_examples, self.batch_size):
            stop = min(start + self.batch_size, self.num_examples)
            yield self._collate([self.source[i] for i in range(start, stop)])


def make_eval_batches(
    source: Source,
    *,
    batch_size: int,
    tokenizer: Tokenizer,
    image_size: int,
    max_examples: int | None = None,
) -> EvalBatches:
    """Deterministic, ordered, finite pass over the first ``max_examples`` (None = all)
    examples of ``source`` in the batch format; keeps the last partial batch. The
    result's ``num_examples`` is the true count. Every host runs the full pass."""
    return EvalBatches(
        source,
        batch_size=batch_size,
        tokenizer=tokenizer,
        image_size=image_size,
        max_examples=max_examples,
    )
