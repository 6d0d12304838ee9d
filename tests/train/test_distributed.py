"""The trainer under torchrun: 2 gloo ranks on CPU, local and global-batch percentiles, resume."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, name, *extra):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mentormix_fast.train", "--out-dir", str(out),
           "--data-dir", str(tmp_path / "data"), "--model", "resnet8", "--batch-size", "16", "--max-steps", "6",
           "--log-every", "3", "--eval-every", "0", "--checkpoint-every", "3", "--no-progress", "--no-tensorboard",
           "--device", "cpu", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """(folder, summary) of an uninterrupted 6-step run with checkpoints at steps 3 and 6."""
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, _torchrun(tmp, "local")


def test_two_gloo_ranks_agree(local_run):
    _, summary = local_run
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["threads"] == 1  # a small student on the CPU: one intra-op thread per rank
    assert summary["ranks_agree"], summary["rank_digests"]
    # Local percentiles: each rank tracks the percentile of its own batch.
    assert summary["rank_loss_ma"][0] != summary["rank_loss_ma"][1]


def test_two_gloo_ranks_global_percentile(tmp_path):
    summary = _torchrun(tmp_path, "global", "--global-percentile")
    assert summary["ranks_agree"] and summary["backend"] == "cpu"  # the fused kernels, not the reference
    # The all-gathered percentile is the same number on every rank, so the moving averages agree.
    assert summary["rank_loss_ma"][0] == summary["rank_loss_ma"][1]


def test_two_gloo_ranks_resume_past_a_damaged_checkpoint(local_run):
    tmp, whole = local_run
    shutil.copytree(tmp / "local", tmp / "part")
    newest = tmp / "part" / "ckpt-000000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a full disk
    summary = _torchrun(tmp, "part", "--resume")
    assert summary["resumed_from"].endswith("ckpt-000000003.pt") and summary["finished"]
    assert (tmp / "part" / "ckpt-000000006.pt.corrupt").exists() and newest.stat().st_size > 1000
    # Both ranks replayed steps 3..6 exactly: the same weights, EMA and moving averages as the whole run.
    assert summary["rank_digests"] == whole["rank_digests"] and summary["rank_loss_ma"] == whole["rank_loss_ma"]
