"""benchmarks/gpu_check.sh: without a GPU it stops at once with one line; its Python helper runs every measured
code path on the CPU at tiny sizes (the GPU numbers themselves come from a GPU machine, see the script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
HELPER = REPO / "benchmarks" / "gpu_check.py"


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("nvidia_smi", ["/nonexistent/nvidia-smi", "false"])
def test_without_a_gpu_the_script_exits_non_zero_with_one_line(nvidia_smi: str) -> None:
    """``false`` stands for an nvidia-smi that lists no GPU; a missing path for a machine without the driver."""
    proc = run(["bash", str(SCRIPT)], NVIDIA_SMI=nvidia_smi)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 3
    assert output == ["error: no NVIDIA GPU on this machine (nvidia-smi lists none); gpu_check.sh measures the GPU "
                      "paths only"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_on_this_machine_without_nvidia_smi_the_same_one_line() -> None:
    proc = run(["bash", str(SCRIPT)])
    assert proc.returncode == 3 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the helper would measure it")
def test_the_helper_without_cuda_exits_3_with_one_line() -> None:
    proc = run([sys.executable, str(HELPER)])
    assert proc.returncode == 3 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU visible to torch")
    unknown = run([sys.executable, str(HELPER), "--parts", "c3d,warp_drive"])
    assert unknown.returncode == 2 and "unknown part(s) warp_drive" in unknown.stderr


@pytest.mark.slow
def test_the_helper_runs_its_parts_on_the_cpu_at_tiny_sizes(tmp_path: Path) -> None:
    facts_file = tmp_path / "facts.json"
    proc = run([sys.executable, str(HELPER), "--device", "cpu", "--tiny", "--parts", "peak,c3d,train,ground",
                "--json", str(facts_file)], OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| measurement | setting | result |"):].strip().splitlines()
    assert table[1] == "|---|---|---|" and all(line.count(" | ") == 2 for line in table[2:])
    text = "\n".join(table)
    for row in ("dense matmul 512^3, bf16", "C3D fc6 alone, float32", "C3D fc6 alone, bfloat16",
                "jobs.extract --dtype auto picks", "DRN training, one CPU, stage 3 (all)",
                "grounding, D 64, T 16, bf16 autocast"):
        assert row in text
    assert "not measured" not in text and "failed" not in text
    facts = json.loads(facts_file.read_text())
    assert facts["c3d_float32_clips_per_s"] > 0 and facts["ground_pair_gflop"] > 0
    assert facts["train_stage1_float32"] > 0 and facts["auto_dtype"] in ("bfloat16", "float32")
