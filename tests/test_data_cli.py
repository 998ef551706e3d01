"""End to end on real formats through the command line: train on CSV + WebDataset +
TFDS, evaluate zero-shot on a labelled CSV and retrieval on TFDS."""

import subprocess
import sys
from pathlib import Path

from data_fixtures import CLASSNAMES, image_csv, write_tfds, write_wds_shard

from multimodal_ssl.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_train_on_csv_wds_tfds_and_evaluate_zeroshot_from_the_command_line(tmp_path):
    """The README's overrides (zero-shot on a labelled CSV with a class-name file), with
    the training data a mixture of all three formats (a single ``csv:PATH`` is the
    one-entry case of the same parser)."""
    train_csv = image_csv(str(tmp_path / "train"), 40, fmt="JPEG", label=False)
    (tmp_path / "train/img/0007.jpg").write_bytes(b"")  # an unreadable example: counted
    test_csv = image_csv(str(tmp_path / "test"), 12, fmt="PNG", name="test.csv")
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    write_wds_shard(str(tmp_path / "s-0.tar"), range(0, 12))
    write_wds_shard(str(tmp_path / "s-1.tar"), range(12, 24), fmt="PNG", caption_in="json")
    write_tfds(str(tmp_path / "tfds"), {"train": 16, "test": 9})
    mixture = [
        (f"csv:{train_csv}", 2),
        (f"wds:{tmp_path}/s-{{0..1}}.tar", 1),
        ("tfds:tiny_captions:train", 1),
    ]
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "multimodal_ssl.main",
        f"--config={ROOT}/configs/siglip.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.train={mixture}",
        f"--config.data.tfds_dir={tmp_path}/tfds",
        f"--config.evals.zeroshot.data=csv:{test_csv}",
        "--config.evals.zeroshot.label_key=label",
        f"--config.evals.zeroshot.classnames={tmp_path}/classnames.txt",
        "--config.evals.retrieval.data=tfds:tiny_captions:test",
        "--config.data.pp_train=random_resized_crop(0.6)|flip_lr|value_range(-1, 1)",
        "--config.total_steps=4",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train/img/0007.jpg is empty" in result.stderr  # logged with its path
    final = read_metrics(str(workdir))[4]
    for key in ("eval/zeroshot/zeroshot_top1", "eval/retrieval/img2txt_r@1"):
        assert 0 <= final[key] <= 1, key
    assert final["data/skipped"] >= 1
