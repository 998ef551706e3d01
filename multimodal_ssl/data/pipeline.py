"""grain input pipelines: the endless, shuffled, sharded, checkpointable training
loader and the ordered, finite eval pass. Both yield the same batch format, one
entry per modality processor (``data/modalities.py``), e.g.

  image: f32 [b, S, S, 3] (value range set by the pp spec's last op)
  text:  i32 [b, L] (right-padded)      audio: f32 [b, frames, n_mels]
  mask/<m>: bool [b], for modalities some sources lack (absent rows are zeros)
  label: i32 [b] (-1 = none)
  id:    i64 [b] (the source index; in a mixture, offset by the sizes of the
         sources listed before it)

Training pipeline of one process (grain dataset API; ``MapDataset`` stages are random
access, so the iterator state is a few integers):

  per source: range(its shard of this process) -> shuffle (new order each epoch)
    -> repeat -> random_map(read + decode each modality's field: image geometric ops,
       caption checks, audio decode/resample/crop/log-mel, ...)
  -> mix(weights) -> to_iter_dataset (``read_threads`` threads read ahead)
  -> drop unreadable examples (counted) -> batch (+ tokenize, masks)
  -> [mp_prefetch: ``worker_count`` processes] -> image value ops, skip counter (main)

An unreadable example (:class:`~.records.BadRecord`) is dropped and the batch filled
with the next ones; the iterator's ``skipped`` counts them (plus the parts of sources
that could not be opened) and is saved with its state, so the trainer's
``data/skipped`` metric survives restarts. A drop is counted with the batch that
replaces it: in a finite run, drops after the last full batch are not counted. With
``strict`` the first one raises.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from multimodal_ssl.data.modalities import (
    ImageProcessor,
    Processor,
    TextProcessor,
    make_processors,
)
from multimodal_ssl.data.records import SKIP_LOG, BadRecord
from multimodal_ssl.data.sources import DEFAULT_PP, DataOptions, Source, open_train_sources
from multimodal_ssl.data.tokenizers import Tokenizer

# Threads per process reading and decoding examples ahead of batching (PIL decodes and
# resizes without the GIL), and how many examples they keep ready.
READ_THREADS = 2
READ_PREFETCH = 512
# This many unreadable examples in a row stop the pipeline: the data (or a data.* key
# such as csv_image_key) is wrong, not a few files.
MAX_CONSECUTIVE_SKIPS = 1000


class ReadExample:
    """``(index, rng) -> record``: reads ``source[index]`` and runs every modality's
    :class:`~.modalities.Processor` ``read`` on its field (decode, geometric ops, caption
    checks). A modality the source does not provide at all gets the processor's
    ``absent`` value and ``present[m] = False``. An unreadable example gives
    ``{"skip": message}`` (logged the first times) or, with ``strict``, raises."""

    def __init__(
        self,
        source: Source,
        processors: Mapping[str, Processor],
        *,
        id_offset: int = 0,
        strict: bool = False,
    ):
        self.source, self.processors = source, dict(processors)
        self.id_offset, self.strict = id_offset, strict
        self.provided = {m for m, p in self.processors.items() if _provides(source, p.reads, p)}

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        try:
            raw = self.source[int(index)]
            where = raw.get("where") or f"{self.source!r} example {index}"
            record = {
                m: p.read(raw[_raw_key(raw, p.reads, p)], where, rng)
                if m in self.provided
                else p.absent()
                for m, p in self.processors.items()
            }
        except BadRecord as e:
            if self.strict:
                raise
            SKIP_LOG(e)
            return {"skip": str(e)}
        record["present"] = {m: m in self.provided for m in self.processors}
        record["label"] = raw["label"]
        record["id"] = self.id_offset + raw["id"]
        return record


def _provides(source: Source, modality: str, processor: Processor) -> bool:
    """Whether ``source`` has ``modality``'s field (sources without ``provides`` have all;
    a legacy two-field record's ``caption`` serves the text modality)."""
    legacy = not source_requests(source)
    if legacy and processor.kind == "text" and getattr(source, "has_captions", True) is False:
        return False
    provides = getattr(source, "provides", None)
    if provides is None or modality in provides:
        return True
    return legacy and processor.kind == "text" and "caption" in provides


def source_requests(source: Source) -> tuple:
    """The field requests ``source`` was opened with (empty for a legacy source)."""
    return tuple(getattr(source, "requests", None) or ())


def _raw_key(raw: Mapping[str, Any], modality: str, processor: Processor) -> str:
    """The key of ``modality``'s field in ``raw``: the modality name (sources serving
    field requests), else the legacy two-field record's ``image`` / ``caption``."""
    if modality in raw:
        return modality
    return "caption" if processor.kind == "text" else processor.field


class Collate:
    """Records -> one batch (uint8 images; the value op runs later, on the whole batch)
    plus ``skipped``: how many unreadable examples were dropped while filling it, and
    ``mask/<m>`` (bool [b]) for each modality in ``masked``."""

    def __init__(self, processors: Mapping[str, Processor], masked: Sequence[str] = ()):
        self.processors, self.masked = dict(processors), tuple(masked)

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        batch = {}
        for m, p in self.processors.items():
            value = p.collate([r[m] for r in records])
            if isinstance(value, dict):  # a processor adding fields (local crops)
                batch.update(value)
            else:
                batch[m] = value
        for m in self.masked:
            batch[f"mask/{m}"] = np.array([r["present"][m] for r in records], bool)
        batch["label"] = np.array([r["label"] for r in records], np.int32)
        batch["id"] = np.array([r["id"] for r in records], np.int64)
        batch["skipped"] = np.array(sum(r["skipped"] for r in records), np.int64)
        return batch


def finish_batch(batch: dict[str, np.ndarray], processors: Mapping[str, Processor]) -> None:
    """Runs every processor's batch stage in place (the image value ops)."""
    for p in processors.values():
        p.finish_into(batch)


class _DropSkipped(grain.IterDataset):
    """Drops ``{"skip": ...}`` records; each kept record gets ``skipped``: the number
    dropped just before it. Stateless beyond its parent (drops happen inside next)."""

    def __iter__(self) -> grain.DatasetIterator:
        return _DropSkippedIterator(self._parent.__iter__())


class _DropSkippedIterator(grain.DatasetIterator):
    trailing_skips = 0  # dropped after the last kept record of a finite stream

    def __next__(self) -> dict[str, Any]:
        dropped = 0
        while True:
            try:
                record = next(self._parent)
            except StopIteration:
                self.trailing_skips = dropped
                raise
            if "skip" not in record:
                record["skipped"] = dropped
                return record
            dropped += 1
            if dropped >= MAX_CONSECUTIVE_SKIPS:
                raise ValueError(
                    f"{dropped} examples in a row were unreadable, the last: {record['skip']}; "
                    f"check the data and the data.* config keys"
                )

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class TrainLoader(grain.IterDataset):
    """What :func:`make_train_loader` returns; ``iter()`` gives a :class:`TrainIterator`."""

    def __init__(
        self,
        parent: grain.IterDataset,
        processors: Mapping[str, Processor],
        fingerprint: str,
        skipped_at_open: int,
        masked: Sequence[str] = (),
    ):
        super().__init__(parent)
        self.processors, self.fingerprint = dict(processors), fingerprint
        self.skipped_at_open = skipped_at_open
        self.masked = tuple(masked)  # modalities some sources lack: batches carry mask/<m>

    def __iter__(self) -> TrainIterator:
        return TrainIterator(self._parent.__iter__(), self)


class TrainIterator(grain.DatasetIterator):
    """Batches of the module's format. ``skipped``: unreadable examples (and unopenable
    source parts) so far. ``get_state()`` / ``set_state()`` (JSON-able dicts, also via
    orbax's ``grain.checkpoint.CheckpointSave/Restore``) continue exactly; a state only
    restores into a loader with the same sources, weights, shard, batch size, seed,
    epochs and worker count (else ValueError)."""

    def __init__(self, parent: grain.DatasetIterator, loader: TrainLoader):
        super().__init__(parent)
        self._loader = loader
        self.skipped = loader.skipped_at_open

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._parent))
        self.skipped += int(batch.pop("skipped"))
        finish_batch(batch, self._loader.processors)
        return batch

    def skipped_all_processes(self) -> int:
        """``skipped`` summed over all processes (a collective: all must call it)."""
        import jax  # local: worker processes unpickle this module and need no jax
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self.skipped
        return int(np.sum(multihost_utils.process_allgather(np.int64(self.skipped))))

    def get_state(self) -> dict[str, Any]:
        return {
            "pipeline": self._loader.fingerprint,
            "skipped": self.skipped,
            "grain": self._parent.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("pipeline") != self._loader.fingerprint:
            raise ValueError(
                "data iterator state was saved by a different input pipeline; resuming needs "
                f"the same data config.\n  saved: {state.get('pipeline')}\n"
                f"  now:   {self._loader.fingerprint}"
            )
        self._parent.set_state(state["grain"])
        self.skipped = int(state["skipped"])


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")


def _seeds(seed: int, component: int) -> tuple[int, int]:
    shuffle_seed, map_seed = np.random.SeedSequence([seed, component]).generate_state(2)
    return int(shuffle_seed), int(map_seed)


def make_train_loader(
    sources: Source | Sequence[tuple[Source, float]],
    *,
    batch_size: int,
    seed: int,
    processors: Mapping[str, Processor] | None = None,
    tokenizer: Tokenizer | None = None,
    image_size: int | None = None,
    preprocess: str = DEFAULT_PP,
    strict: bool = False,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    read_threads: int = READ_THREADS,
    num_epochs: int | None = None,
) -> TrainLoader:
    """The training loader of one process (see the module docstring for the stages).

    Args:
      sources: one source, or a mixture ``[(source, weight), ...]``: each batch draws
        from the sources in proportion to the weights, each repeated on its own.
      batch_size: examples per batch of this process (incomplete last batch dropped).
      seed: shuffle / augmentation seed (a new order each epoch).
      processors: ``{modality: Processor}`` (:func:`.modalities.make_processors`); the
        batch has one entry per modality. None: the image/text pair of ``tokenizer``
        (text ids [b, max_len]), ``image_size`` and ``preprocess`` (images [b, S, S, 3],
        the pp spec; :mod:`.preprocess`).
      strict: raise on the first unreadable example instead of skipping it.
      shard_index, shard_count: each source is cut into ``shard_count`` contiguous,
        equal shards (remainder dropped); this process reads shard ``shard_index``, so
        processes never share an example.
      worker_count: decode in this many processes (0 = threads of this process only).
      read_threads: reading threads per process.
      num_epochs: passes over each source (None = forever).
    """
    mixture = list(sources) if isinstance(sources, list | tuple) else [(sources, 1.0)]
    for pair in mixture:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and pair[1] > 0):
            raise ValueError(f"sources: expected a source or [(source, weight > 0)], got {pair!r}")
    _check_int("batch_size", batch_size, 1)
    _check_int("shard_count", shard_count, 1)
    _check_int("worker_count", worker_count, 0)
    _check_int("read_threads", read_threads, 0)
    if not isinstance(shard_index, int) or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index: must be in [0, {shard_count}), got {shard_index!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed: the shuffle seed must be an int in [0, 2**32), got {seed!r}")
    if num_epochs is not None:
        _check_int("num_epochs", num_epochs, 1)
    if processors is None:
        processors = image_text_processors(tokenizer, image_size, preprocess)
    per_shard = [len(source) // shard_count for source, _ in mixture]
    if sum(per_shard) < batch_size or min(per_shard) < 1:
        names = ", ".join(repr(s) for s, _ in mixture)
        raise ValueError(
            f"batch_size: {batch_size} exceeds the {sum(per_shard)} examples of each of the "
            f"{shard_count} shards of {names}"
        )
    components, offset = [], 0
    for i, ((source, _), per) in enumerate(zip(mixture, per_shard, strict=True)):
        if (
            getattr(source, "has_captions", True) is False
            and not source_requests(source)
            and any(p.kind == "text" for p in processors.values())
        ):
            raise ValueError(f"{source!r} has no captions: it can be evaluated, not trained on")
        shuffle_seed, map_seed = _seeds(seed, i)
        start = shard_index * per
        ds = grain.MapDataset.range(start, start + per).shuffle(seed=shuffle_seed)
        ds = ds.repeat(num_epochs).random_map(
            ReadExample(source, processors, id_offset=offset, strict=strict), seed=map_seed
        )
        components.append(ds)
        offset += len(source)
    masked = check_modalities([s for s, _ in mixture], processors)
    weights = [float(w) for _, w in mixture]
    ds = components[0] if len(components) == 1 else grain.MapDataset.mix(components, weights)
    it = _DropSkipped(ds.to_iter_dataset(grain.ReadOptions(read_threads, READ_PREFETCH)))
    it = it.batch(batch_size, drop_remainder=True, batch_fn=Collate(processors, masked))
    if worker_count:
        if not flags.FLAGS.is_parsed():
            # grain's worker processes read absl flags (e.g. its profiling switch); outside
            # an absl app (tests, notebooks) use their defaults instead of failing.
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(worker_count, per_worker_buffer_size=2))
    fingerprint = (
        f"sources={[(repr(s), w) for s, w in mixture]} shard={shard_index}/{shard_count} "
        f"batch={batch_size} seed={seed} epochs={num_epochs} workers={worker_count} "
        f"modalities={[p.fingerprint() for p in processors.values()]}"
    )
    skipped_at_open = sum(len(getattr(s, "problems", ())) for s, _ in mixture)
    return TrainLoader(it, processors, fingerprint, skipped_at_open, masked)


def image_text_processors(
    tokenizer: Tokenizer, image_size: int, preprocess: str = DEFAULT_PP
) -> dict[str, Processor]:
    """The classic pair: ``image`` (``preprocess`` at ``image_size``) and ``text``."""
    if tokenizer is None or image_size is None:
        raise ValueError("give processors, or tokenizer and image_size (image/text pair)")
    return {
        "image": ImageProcessor("image", None, preprocess, image_size),
        "text": TextProcessor("text", None, tokenizer),
    }


def check_modalities(sources: Sequence[Source], processors: Mapping[str, Processor]) -> list[str]:
    """The modalities that only some of ``sources`` provide (their examples are masked
    where absent). ValueError naming the modality and ``config.data.fields.<m>`` when
    no source provides one."""
    masked = []
    for m, p in processors.items():
        having = [s for s in sources if _provides(s, p.reads, p)]
        if not having:
            fields = sorted({f for s in sources for f in getattr(s, "available_fields", ())})
            raise ValueError(
                f"modality {m!r}: no data source has its field {p.field!r} (config.data.fields"
                f".{m}; sources: {', '.join(repr(s) for s in sources)}"
                + (f"; their fields: {fields}" if fields else "")
                + ")"
            )
        if len(having) < len(sources):
            lacking = [repr(s) for s in sources if s not in having]
            logging.warning("Modality %r is masked in the examples of %s", m, ", ".join(lacking))
            masked.append(m)
    return masked


def train_loader_from_config(
    config: Any,
    *,
    batch_size: int,
    shard_index: int,
    shard_count: int,
    tokenizer: Tokenizer | None = None,
) -> TrainLoader:
    """:func:`make_train_loader` for ``config.data`` (sources, one processor per tower of
    ``config.model.towers``, strict, worker and thread counts) and ``config.seed``."""
    data = config.data
    processors = make_processors(config, train=True, tokenizer=tokenizer)
    requests = tuple(p.request for m, p in processors.items() if p.reads == m)  # not views
    return make_train_loader(
        open_train_sources(data, config.seed, requests),
        batch_size=batch_size,
        seed=config.seed,
        processors=processors,
        strict=data.strict,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=data.worker_count,
        read_threads=data.read_threads,
    )


class EvalBatches:
    """One ordered pass over ``source[:num_examples]`` in batches of ``batch_size``
    (the last one may be smaller); iterable any number of times, each pass identical.

    Batches hold one entry per processor (``processors``, or the image/text pair of
    ``tokenizer`` and ``image_size`` read with ``options.pp_eval``), ``mask/<m>`` for
    the modalities the source lacks, ``label`` and ``id``.
    Attributes: ``num_examples`` (examples attempted per pass), ``skipped`` (unreadable
    examples dropped in the last pass); ``len()`` is the number of batches when none
    are dropped.
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        processors: Mapping[str, Processor] | None = None,
        tokenizer: Tokenizer | None = None,
        image_size: int | None = None,
        max_examples: int | None = None,
        options: DataOptions | dict | None = None,
    ):
        _check_int("batch_size", batch_size, 1)
        if max_examples is not None:
            _check_int("max_examples", max_examples, 1)
        options = DataOptions.coerce(options)
        self.source = source
        self.batch_size = batch_size
        self.num_examples = len(source) if max_examples is None else min(max_examples, len(source))
        self.skipped = 0
        if processors is None:
            processors = image_text_processors(tokenizer, image_size, options.pp_eval)
        self.processors = dict(processors)
        self._read = ReadExample(source, self.processors, strict=options.strict)
        lacking = [m for m in self.processors if m not in self._read.provided]
        self._collate = Collate(self.processors, lacking)

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        ds = grain.MapDataset.range(self.num_examples).random_map(self._read, seed=0)
        records = iter(
            _DropSkipped(ds.to_iter_dataset(grain.ReadOptions(READ_THREADS, READ_PREFETCH)))
        )
        skipped = 0
        try:
            while chunk := list(itertools.islice(records, self.batch_size)):
                batch = self._collate(chunk)
                skipped += int(batch.pop("skipped"))
                finish_batch(batch, self.processors)
                yield batch
        finally:
            records.close()
        self.skipped = skipped + records.trailing_skips
        if self.skipped:
            logging.warning(
                "Eval pass over %r skipped %d unreadable examples", self.source, self.skipped
            )


def make_eval_batches(
    source: Source,
    *,
    batch_size: int,
    processors: Mapping[str, Processor] | None = None,
    tokenizer: Tokenizer | None = None,
    image_size: int | None = None,
    max_examples: int | None = None,
    options: DataOptions | dict | None = None,
) -> EvalBatches:
    """Deterministic, ordered, finite pass over the first ``max_examples`` (None = all)
    examples of ``source`` in the batch format (see :class:`EvalBatches`); keeps the last
    partial batch and drops unreadable examples (raises on them with
    ``options.strict``). Every host runs the full pass."""
    return EvalBatches(
        source,
        batch_size=batch_size,
        processors=processors,
        tokenizer=tokenizer,
        image_size=image_size,
        max_examples=max_examples,
        options=options,
    )
