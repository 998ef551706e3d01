"""Kill-and-resume of the input pipeline through real orbax checkpoints: a process
reading a CSV of JPEGs with random augmentation is SIGKILLed after step 13 of 30; a
fresh process restores the newest checkpoint and continues. Every step's example ids,
augmented pixels and skip count equal an uninterrupted run's.

Also runnable as a script (that is how the test starts the processes it kills):
``python tests/test_data_resume.py WORKDIR CSV OUT KILL_AT``.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from data_fixtures import image_csv

from multimodal_ssl.data import pipeline, sources, tokenizers

TOTAL_STEPS, KILL_AT = 30, 13
PP = "random_resized_crop(0.5)|flip_lr|value_range(-1, 1)"


def run_steps(workdir: str, csv_path: str, out: str, kill_at: int | None) -> None:
    """Steps to TOTAL_STEPS from the newest checkpoint in workdir (saved every 4 steps,
    async); one JSON line per step: [step, ids, pixel sum, skipped]."""
    import jax.numpy as jnp

    from multimodal_ssl.checkpointing import Checkpointer, abstract_like

    src = sources.get_source(f"csv:{csv_path}", image_size=8, seed=0, default_split="train")
    it = iter(
        pipeline.make_train_loader(
            src,
            batch_size=4,
            seed=1,
            image_size=8,
            preprocess=PP,
            tokenizer=tokenizers.ByteTokenizer(16),
        )
    )
    state = {"w": jnp.zeros(3)}  # stands in for the train state saved next to the iterator
    checkpointer = Checkpointer(workdir, keep=2)
    restored = checkpointer.restore(abstract_like(state), it)
    start = 0 if restored is None else restored[1]
    with open(out, "a") as f:
        for step in range(start + 1, TOTAL_STEPS + 1):
            batch = next(it)
            line = [step, batch["id"].tolist(), round(float(batch["image"].sum()), 3), it.skipped]
            f.write(json.dumps(line) + "\n")
            f.flush()
            if step % 4 == 0:
                checkpointer.save(step, state, it)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    checkpointer.close()
    it.close()


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_kill_at_step_13_and_resume_sees_the_same_examples(tmp_path):
    csv_path = image_csv(str(tmp_path), 23, fmt="JPEG")
    (tmp_path / "img/0004.jpg").write_bytes(b"broken")  # a skip, counted across the restart
    run_steps(str(tmp_path / "reference"), csv_path, str(tmp_path / "reference.jsonl"), None)
    reference = {line[0]: line for line in read_lines(tmp_path / "reference.jsonl")}
    assert sorted(reference) == list(range(1, TOTAL_STEPS + 1))
    assert reference[TOTAL_STEPS][3] > 0

    cmd = [
        sys.executable,
        str(Path(__file__)),
        str(tmp_path / "killed"),
        csv_path,
        str(tmp_path / "killed.jsonl"),
    ]
    first = subprocess.run([*cmd, str(KILL_AT)], capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert [line[0] for line in read_lines(tmp_path / "killed.jsonl")] == list(range(1, 14))
    second = subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]

    lines = read_lines(tmp_path / "killed.jsonl")
    resumed_from = lines[KILL_AT][0] - 1  # the first line the second process wrote
    assert resumed_from in (4, 8, 12)  # a checkpoint before the kill (async saves)
    assert sorted({line[0] for line in lines}) == list(range(1, TOTAL_STEPS + 1))
    for line in lines:  # steps seen twice (after the checkpoint, before the kill) agree too
        assert line == reference[line[0]], (line, reference[line[0]])


if __name__ == "__main__":
    workdir, csv_arg, out_arg, kill = sys.argv[1:]
    run_steps(workdir, csv_arg, out_arg, int(kill) or None)
