"""grain pipelines on generated data: batch format, determinism, sharding, mixtures,
exact resume, worker processes, eval passes."""

import itertools
import time

import numpy as np
import pytest

from multimodal_ssl.data import pipeline, shapes, tokenizers

SIZE = 8


def source(n=48, split="train", image_size=SIZE, **options):
    return shapes.ShapesSource(
        split=split,
        image_size=image_size,
        seed=0,
        options=shapes.ShapesOptions(train_examples=n, test_examples=n, **options),
    )


TOK = tokenizers.ByteTokenizer(64)


def loader(src, batch_size=4, seed=0, **kwargs):
    return pipeline.make_train_loader(
        src, batch_size=batch_size, seed=seed, tokenizer=TOK, image_size=SIZE, **kwargs
    )


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def ids_of(batches):
    return [b["id"].tolist() for b in batches]


def test_batch_format_matches_the_source():
    src = source()
    (batch,) = take(iter(loader(src, batch_size=6)), 1)
    assert set(batch) == {"image", "text", "label", "id"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (6, SIZE, SIZE, 3)
    assert batch["text"].dtype == np.int32 and batch["text"].shape == (6, 64)
    assert batch["label"].dtype == np.int32 and batch["id"].dtype == np.int64
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    for row, i in enumerate(batch["id"]):
        record = src[int(i)]
        np.testing.assert_allclose(batch["image"][row], record["image"] / 127.5 - 1, atol=1e-6)
        assert TOK.decode(batch["text"][row]) == [record["caption"]]
        assert batch["label"][row] == record["label"]


def test_same_seed_same_batches_other_seed_other_order():
    src = source()
    a, b = take(iter(loader(src)), 5), take(iter(loader(src)), 5)
    assert ids_of(a) == ids_of(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["text"], y["text"])
    assert ids_of(take(iter(loader(src, seed=1)), 5)) != ids_of(a)


@pytest.mark.parametrize("n, shard_count", [(48, 2), (50, 3)])
def test_shards_are_disjoint_and_cover_one_epoch(n, shard_count):
    src = source(n)
    per_shard = n // shard_count
    seen = []
    for index in range(shard_count):
        batches = list(
            loader(
                src,
                batch_size=per_shard // 2,
                shard_index=index,
                shard_count=shard_count,
                num_epochs=1,
            )
        )
        ids = [i for b in ids_of(batches) for i in b]
        assert len(ids) == len(set(ids)) == per_shard
        assert ids != sorted(ids)  # shuffled
        seen.append(set(ids))
    assert set().union(*seen) == set(range(per_shard * shard_count))  # remainder dropped
    assert sum(map(len, seen)) == per_shard * shard_count


def test_epochs_repeat_with_a_new_order():
    src = source(16)
    ids = [i for b in ids_of(take(iter(loader(src)), 8)) for i in b]
    first, second = ids[:16], ids[16:]
    assert sorted(first) == sorted(second) == list(range(16)) and first != second


@pytest.mark.parametrize("shard_index", [0, 1])
def test_state_restore_continues_exactly(shard_index):
    src = source(24)
    kwargs = {"shard_index": shard_index, "shard_count": 2}
    it = iter(loader(src, **kwargs))
    take(it, 2)
    state = it.get_state()
    expected = take(it, 7)  # crosses the epoch boundary (3 batches per epoch and shard)
    restored = iter(loader(src, **kwargs))
    restored.set_state(state)
    got = take(restored, 7)
    assert ids_of(got) == ids_of(expected)
    for x, y in zip(got, expected, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    with pytest.raises(ValueError, match="state was saved by a different input pipeline"):
        iter(loader(source(24, image_size=4), **kwargs)).set_state(state)
    with pytest.raises(ValueError, match=r"saved: .*batch=4.*\n  now: .*batch=2"):
        iter(loader(src, batch_size=2, **kwargs)).set_state(state)


def test_worker_processes_cover_the_epoch_and_restore_exactly():
    src = source(24)
    it = iter(loader(src, worker_count=2))
    first = take(it, 3)
    state = it.get_state()
    rest = take(it, 3)
    assert sorted(i for b in ids_of(first + rest) for i in b) == list(range(24))  # one epoch
    it.set_state(state)  # workers restart from the saved per-worker positions
    assert ids_of(take(it, 3)) == ids_of(rest)
    it.close()


def test_mixture_draws_in_proportion_with_offset_ids_and_disjoint_shards():
    big, small = source(40), source(20, split="test")
    mixture = [(big, 3.0), (small, 1.0)]
    seen = []
    for index in (0, 1):
        it = iter(loader(mixture, batch_size=8, shard_index=index, shard_count=2))
        ids = np.concatenate([b["id"] for b in take(it, 10)])
        # ids < 40 come from `big`, 40 + j is example j of `small`.
        assert np.sum(ids < 40) == 60 and np.sum(ids >= 40) == 20
        shard_big = set(range(20 * index, 20 * index + 20))
        shard_small = {40 + j for j in range(10 * index, 10 * index + 10)}
        assert set(ids.tolist()) == shard_big | shard_small  # each shard fully, nothing else
        first = [int(i) - 40 for i in ids if i >= 40][:10]
        assert sorted(first) == list(range(10 * index, 10 * index + 10))  # a full pass first
        seen.append(set(ids.tolist()))
    assert not seen[0] & seen[1]
    record = small[int(first[0])]
    it = iter(loader(mixture, batch_size=8, shard_index=1, shard_count=2))
    batch = next(b for b in it if np.any(b["id"] == 40 + first[0]))
    row = int(np.flatnonzero(batch["id"] == 40 + first[0])[0])
    assert TOK.decode(batch["text"][row]) == [record["caption"]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, r"batch_size: must be an int >= 1, got 0"),
        ({"batch_size": 25, "shard_count": 2}, r"batch_size: 25 exceeds the 24 examples"),
        ({"shard_index": 2, "shard_count": 2}, r"shard_index: must be in \[0, 2\), got 2"),
        ({"seed": -1}, r"seed: the shuffle seed must be an int in \[0, 2\*\*32\)"),
        ({"num_epochs": 0}, r"num_epochs: must be an int >= 1"),
        ({"preprocess": "resize|flip_lr"}, r"must end with a value op"),
        ({"read_threads": -1}, r"read_threads: must be an int >= 0"),
    ],
)
def test_train_loader_bad_arguments(kwargs, match):
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        loader(source(48), **kwargs)


def test_wrong_image_size_names_the_record():
    it = iter(
        pipeline.make_train_loader(
            source(),
            batch_size=2,
            seed=0,
            tokenizer=TOK,
            image_size=SIZE + 1,
            preprocess="value_range(-1, 1)",
        )
    )
    with pytest.raises(
        ValueError,
        match=r"ShapesSource.* example \d+: image must be uint8 \[9, 9, 3\] "
        r"after the ops 'value_range\(-1, 1\)', got uint8 \[8, 8, 3\]",
    ):
        next(it)
    # The default ops resize and crop any image to the configured size.
    batch = next(
        iter(
            pipeline.make_train_loader(
                source(), batch_size=2, seed=0, tokenizer=TOK, image_size=SIZE + 1
            )
        )
    )
    assert batch["image"].shape == (2, SIZE + 1, SIZE + 1, 3)


def test_eval_batches_are_ordered_finite_and_repeatable():
    src = source(10, split="test")
    batches = pipeline.make_eval_batches(src, batch_size=4, tokenizer=TOK, image_size=SIZE)
    assert batches.num_examples == 10 and len(batches) == 3
    first = list(batches)
    assert ids_of(first) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # last partial batch kept
    assert ids_of(list(batches)) == ids_of(first)
    np.testing.assert_allclose(first[2]["image"][1], src[9]["image"] / 127.5 - 1, atol=1e-6)
    assert TOK.decode(first[0]["text"]) == [src[i]["caption"] for i in range(4)]
    assert first[1]["label"].tolist() == [src[i]["label"] for i in range(4, 8)]
    few = pipeline.make_eval_batches(
        src, batch_size=4, tokenizer=TOK, image_size=SIZE, max_examples=5
    )
    assert few.num_examples == 5 and ids_of(list(few)) == [[0, 1, 2, 3], [4]]
    with pytest.raises(ValueError, match=r"max_examples: must be an int >= 1, got 0"):
        pipeline.make_eval_batches(
            src, batch_size=4, tokenizer=TOK, image_size=SIZE, max_examples=0
        )


def test_throughput_for_the_record():
    """Prints examples/s of generation and of the loader at 32 px (run with -s);
    asserts only that both produced what was asked."""
    src = shapes.ShapesSource(split="train", image_size=32, seed=0, options=shapes.ShapesOptions())
    start = time.perf_counter()
    records = [src[i] for i in range(300)]
    gen = len(records) / (time.perf_counter() - start)
    it = iter(pipeline.make_train_loader(src, batch_size=64, seed=0, tokenizer=TOK, image_size=32))
    next(it)
    start = time.perf_counter()
    batches = take(it, 5)
    load = 5 * 64 / (time.perf_counter() - start)
    print(
        f"\ngenerated:shapes 32px: {gen:.0f} examples/s generated (1 thread), "
        f"{load:.0f} examples/s through the train loader (batch 64)"
    )
    assert all(b["image"].shape == (64, 32, 32, 3) for b in batches)
