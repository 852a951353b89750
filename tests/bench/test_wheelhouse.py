"""make wheelhouse: which locked packages an offline node is given (no network: the selection only)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from experiments.bench.wheelhouse import locked_pins, read_have, wanted

REPO = Path(__file__).resolve().parents[2]


def test_the_node_keeps_its_own_torch_and_is_given_what_it_lacks(tmp_path):
    lock = "hydra-core==1.3.2 \\\n    --hash=sha256:abc\nTorch==2.14.1\nnvidia-cudnn-cu13==9.1\nMLflow_Skinny==3.1\n" \
           "numpy==2.1 ; python_version >= '3.11'\nboto3==1.0\n# comment==1\n"
    pins = locked_pins(lock)
    assert pins == [("hydra-core", "1.3.2"), ("torch", "2.14.1"), ("nvidia-cudnn-cu13", "9.1"),
                    ("mlflow-skinny", "3.1"), ("numpy", "2.1"), ("boto3", "1.0")]
    have = tmp_path / "have.txt"
    have.write_text("Package    Version\n---------- -------\nnumpy      2.5.2\n")
    assert wanted(pins, read_have(str(have))) == ["hydra-core==1.3.2", "mlflow-skinny==3.1"]
    assert wanted(pins, {"numpy"}, include_optional=True)[-1] == "boto3==1.0"


def test_every_runtime_dependency_of_the_suite_is_in_the_lock():
    pins = dict(locked_pins((REPO / "requirements-lock.txt").read_text()))
    for name in ("hydra-core", "omegaconf", "mlflow", "lightning", "timm", "litdata", "torchmetrics"):
        assert name in pins, name


def test_the_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO / "experiments/bench/gpu_check.sh")]).returncode == 0
