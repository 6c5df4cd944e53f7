"""benches/gpu_check.sh keeps to its time budget (the device tool stops a command at 600 s and a task has 15
device-minutes): a step that no longer fits is skipped and named, the summary files are written anyway, and a
bad step name or budget stops it before any work. (Its steps themselves are rehearsed on the CPU with
``--rehearse``: benches/results/cpu_gpu_check_rehearsal.log.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benches" / "gpu_check.sh"


def _run(out, *args, budget="420"):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET": budget}
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_step_that_does_not_fit_is_skipped_and_named(tmp_path):
    r = _run(tmp_path / "out", "--rehearse", "tests", "prune", budget="30")
    assert r.returncode == 1, r.stdout + r.stderr
    log = (tmp_path / "out" / "summary.log").read_text()
    assert "tests: SKIPPED" in log and "prune: SKIPPED" in log and "budget left" in log
    assert "breakdown" not in log  # not named: not run
    assert tarfile.open(tmp_path / "out" / "results.tgz").getnames() == ["."]


@pytest.mark.parametrize("args, budget, message", [(["bogus"], "420", "unknown step 'bogus'"),
                                                   (["--rehearse"], "7m", "GPU_CHECK_BUDGET must be whole seconds")])
def test_bad_arguments_stop_before_any_work(args, budget, message, tmp_path):
    r = _run(tmp_path / "out", *args, budget=budget)
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "out" / "summary.log").exists()
