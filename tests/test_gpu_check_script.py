"""scripts/gpu_check.sh, the one device call that proves the GPU path, in its dry run: every stage
with tiny sizes on the CPU (the GPU-only tests skip), so the script is known to work before device
time is spent on it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_goes_through_every_stage(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    stages = (tmp_path / "stages.txt").read_text().split("\n")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert [line.split()[0] for line in stages if line] == ["env", "build", "tests", "bench", "train", "memcheck"]
    bench = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert {"device", "copy_bandwidth", "rows"} <= set(bench) and bench["rows"]
    assert {"variant", "batch", "classes", "dtype", "seconds", "speedup_vs_reference", "speedup_vs_compiled",
            "fraction_of_copy_bw", "device_launches"} <= set(bench["rows"][0])
    assert next(tmp_path.glob("bench-*.md")).read_text().startswith("# MentorMix loss step")
    train = json.loads((tmp_path / "train.json").read_text())
    assert train["ce_images_per_s"] > 0 and train["mentormix_images_per_s"] > 0
