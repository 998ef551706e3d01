"""A SIGKILL of a configs/siglip2.py:tiny run (LocCa decoder, EMA teacher, local-to-global
and masked prediction): the same command resumes it step for step and bit for bit. Its own
file (not tests/test_kills.py) so the two test workers can share the killed runs."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal_ssl.metrics import read_metrics
from tests.test_kills import _child, _final_params, _leaves


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compilation cache for the children of this module."""
    return tmp_path_factory.mktemp("jax_cache")


SIGLIP2 = ["--config.total_steps=6", "--config.checkpoint.every_steps=1",
           "--config.distill.start=0.2",
           *(f"--config.evals.{e}.every_steps=1000" for e in ("zeroshot", "retrieval", "locca"))]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_a_sigkill_with_siglip2s_decoder_and_teacher_on_resumes_step_for_step(tmp_path, cache):
    """configs/siglip2.py:tiny (LocCa decoder all along; EMA teacher, local-to-global and
    masked prediction from step 2 of 6): killed after step 5, resumed from the newest
    complete checkpoint (the last async saves may die with the process; it is one of
    steps 2-5: the teacher is in it), its curve equals the uninterrupted one in every
    term and its final state (params, optimizer state, teacher) bit for bit."""
    kw = {"recipe": "siglip2.py:tiny", "base_args": SIGLIP2}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _child(reference, "none", cache, **kw).returncode == 0
    assert _child(killed, "kill@step:5", cache, **kw).returncode == -9
    last = _child(killed, "none", cache, **kw)
    restored = [line for line in last.stderr.splitlines() if "Restored checkpoint" in line]
    assert last.returncode == 0 and restored, last.stderr[-2000:]
    assert int(restored[0].rsplit(" ", 1)[1]) >= 2, restored
    terms = ("train/loss", "train/loss/image_text", "train/loss/locca", "train/loss/local_global",
             "train/loss/masked")
    got, want = read_metrics(str(killed)), read_metrics(str(reference))
    for term in terms:
        curve = [want[s][term] for s in range(1, 7)]
        assert term != "train/loss/masked" or (curve[0] == 0 and curve[1] > 0), curve
        assert [got[s][term] for s in range(1, 7)] == curve, term
    for g, w in zip(_leaves(_final_params(killed, 6)), _leaves(_final_params(reference, 6)),
                    strict=True):
        assert np.array_equal(g, w)
