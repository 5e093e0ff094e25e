"""Resuming a run whose newest checkpoints were damaged after they were written (issue 8, finding 8):
the run falls back to the newest readable round, says which files it skipped, and ends with the
same model as before the damage."""

from __future__ import annotations

import json

import pytest
import torch

from fedseg.experiment import parse_experiment
from fedseg.simulate import run_simulation
from tiny_experiment import tiny_experiment


def test_resume_with_an_empty_newest_checkpoint_redoes_the_lost_rounds(tmp_path):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=3, n_cases=5, training={"local_steps": 1}))
    out = tmp_path / "run"
    run_simulation(experiment, out)
    checkpoints = out / "checkpoints"
    before = torch.load(checkpoints / "FL_global.pt", weights_only=True)
    (checkpoints / "FL_global.pt").write_bytes(b"")  # e.g. a full disk when it was copied
    (checkpoints / "global_round_002.pt").write_bytes(b"")
    half = (checkpoints / "global_round_001.pt").read_bytes()
    (checkpoints / "global_round_001.pt").write_bytes(half[: len(half) // 2])

    with pytest.warns(UserWarning) as caught:
        run_simulation(experiment, out, resume=True)

    messages = "\n".join(str(w.message) for w in caught)
    assert "FL_global.pt is unreadable (empty file); it is made again" in messages
    assert "global_round_002.pt (empty file); global_round_001.pt (" in messages
    assert "resuming after round 0 from global_round_000.pt" in messages
    after = torch.load(checkpoints / "FL_global.pt", weights_only=True)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [r for r in range(3) for _ in range(3)]  # rounds 1 and 2 once each, redone
    assert torch.load(checkpoints / "global_round_002.pt", weights_only=True)["round"] == 2
