"""Two processes under torchrun train one model with DistributedDataParallel: identical weights, falling loss, one card."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_support import ROOT, TRAIN, needs_brats, tiny_data

from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.train import RANK_WEIGHTS_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory, crop_case):
    return tiny_data(tmp_path_factory, crop_case)


@needs_brats
def test_two_ranks_end_with_identical_weights_and_the_loss_goes_down(data, tmp_path):
    out, weights = tmp_path / "run", tmp_path / "ranks"
    weights.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    launcher += ["--master_port", str(free_port()), "-m", "BrainTumorSeg.cli"]
    train = ["train", "--architecture", "unet2d", "--config", '{"features": [4, 8]}', *data.args(out), "--id", "ddp-unet"]
    train += ["--steps", "12", "--batch", "4", "--crop", "48", "48", "--lr", "0.01", "--tumor-fraction", "1", "--no-augment"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", RANK_WEIGHTS_ENV: str(weights)}
    result = subprocess.run(launcher + train, env=environment, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    cases = [set(json.loads((weights / f"rank{r}-cases.json").read_text())) for r in (0, 1)]
    assert cases[0] and cases[1] and not cases[0] & cases[1]  # each rank trained on its own share of the cases,
    assert cases[0] | cases[1] == set(TRAIN)  # so identical weights below mean DDP averaged their gradients
    rank0, rank1 = load_file(str(weights / "rank0.safetensors")), load_file(str(weights / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    losses = [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 12  # one line per step, written by rank 0 only
    assert sum(losses[-3:]) < sum(losses[:3])

    card = ModelCard.read(out / "ddp-unet.json")  # only rank 0 writes the card
    assert card.training["processes"] == 2 and card.training["command"].startswith("torchrun --nproc_per_node 2 ")
    assert card.inputs["spacing_mm"] == [1.0, 1.0, 1.0]  # gathered from both ranks' cases
    shipped = {k: v.float() for k, v in load_file(str(card.weights_path)).items()}
    assert all(torch.allclose(shipped[k], rank0[k].float(), atol=1e-2, rtol=1e-2) for k in rank0)
    assert list(out.glob("*.json")) == [out / "ddp-unet.json"]
