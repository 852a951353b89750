"""``trainer=ddp`` on 2 CPU processes (gloo): the logged val metrics equal a single-process evaluation, good data
trains, and bad data that rank 0 alone sees stops both ranks at once with rank 0's message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from experiments.data.audit import PreflightSettings, preflight
from experiments.training.builders import build_datamodule, build_module
from experiments.data.datamodule import DetectorDataModule
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_config_composes(tmp_path):
    cfg = compose_config(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path)
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
    assert cfg.trainer.devices == 2 and cfg.trainer.num_nodes == 1


def test_eval_loaders_have_no_sampler_outside_a_running_trainer(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=3, size=32)
    dm = DetectorDataModule(name="t", root=str(root), crop_size=32, resize_size=None, num_workers=0)
    dm.setup()
    assert not isinstance(dm.val_dataloader().sampler, torch.utils.data.DistributedSampler)


def _single_process_val_scores(cfg, ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """P(synthetic) and labels of the whole val split, one process, weights of ``ckpt``."""
    module = build_module(cfg)
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    module.eval()
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    logits, labels = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            logits.append(module(batch["image"]).float())
            labels.append(batch["label"].long())
    return torch.cat(logits), torch.cat(labels)


def _auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(BinaryAUROC()(probs, labels))


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_exact_val_auc_and_loss(tmp_path):
    # one extra synthetic image gives an odd val split (25), which a padding sampler would fill with a duplicate
    tree = make_genimage_tree(tmp_path / "genimage", n=21, size=32)
    first = sorted((tree / "gen_a" / "train" / "ai").iterdir())[0]
    (tree / "gen_a" / "train" / "ai" / "extra.png").write_bytes(first.read_bytes())
    # a tiny learning rate keeps the val AUC away from 1.0, so one duplicated image would change it
    overrides = TINY + [f"data.root={tree}", "data.val_fraction=0.3", "trainer.max_epochs=2", "model.optimizer.lr=1e-6",
                        "trainer.precision=32-true", "~callbacks.early_stopping", "~callbacks.progress_bar",
                        "diagnostics=false"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    env = {**os.environ, "SUITE_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, *ddp], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert len(runs) == 1, "only rank 0 may open an MLflow run"
    history = sorted(client.get_metric_history(runs[0].info.run_id, "val/auc"), key=lambda m: m.step)
    logged = history[-1].value
    loss_history = sorted(client.get_metric_history(runs[0].info.run_id, "val/loss"), key=lambda m: m.step)

    ckpt = next((tmp_path / "logs").glob("train/runs/*/checkpoints/last.ckpt"))
    logits, labels = _single_process_val_scores(compose_config(overrides, tmp_path / "eval"), ckpt)
    probs = torch.sigmoid(logits)
    expected = _auc(probs, labels)
    assert len(labels) % 2 == 1 and runs[0].data.metrics["data/val_images"] == len(labels)
    assert logged == pytest.approx(expected, abs=1e-6)
    # the loss too: an image-weighted mean over both processes' uneven shards, not a mean of rank means
    expected_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()))
    assert loss_history[-1].value == pytest.approx(expected_loss, abs=1e-5)
    # what a padding DistributedSampler would have scored (image 0 twice): the check above tells them apart
    padded = _auc(torch.cat([probs, probs[:1]]), torch.cat([labels, labels[:1]]))
    assert abs(padded - expected) > 1e-6, "the toy val split cannot show the padding error"


DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
#: each rank reads its own dataset root: rank 0 (LOCAL_RANK unset or 0) DATA_ROOT_0, rank 1 DATA_ROOT_1
ROOT_OF_RANK = "data.root='${oc.env:DATA_ROOT_${oc.env:LOCAL_RANK,0}}'"
VERDICT_LINE = re.compile(r"\[([0-9-]+ [0-9:]+,[0-9]+)\]\S* - rank 1: rank 0's data check failed "
                          r"\(verdict received after ([0-9.]+) s\)")


def _ddp_run(tmp_path: Path, roots: tuple[Path, Path], *extra: str, timeout: float) -> subprocess.CompletedProcess:
    overrides = TINY + [ROOT_OF_RANK, "trainer.max_epochs=1", "trainer.precision=32-true", "~callbacks.early_stopping",
                        "~callbacks.progress_bar", "trainer.enable_model_summary=false", "diagnostics=false", *extra]
    env = {**os.environ, "SUITE_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "DATA_ROOT_0": str(roots[0]), "DATA_ROOT_1": str(roots[1])}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, *DDP_CPU], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_data_seen_by_rank_zero_stops_every_rank_at_once(tmp_path):
    # rank 0's tree has a class folder of corrupt files; rank 1's is clean: it can only stop on rank 0's word
    bad = make_genimage_tree(tmp_path / "bad", n=4, size=32)
    corrupt = sorted((bad / "gen_a" / "train" / "ai").iterdir())
    for path in corrupt:
        path.write_bytes(b"not an image")
    clean = make_genimage_tree(tmp_path / "clean", n=4, size=32)
    dm = DetectorDataModule(name="t", root=str(clean), crop_size=32, resize_size=None, num_workers=0)
    preflight(dm, PreflightSettings(progress=False))  # rank 1's own data would pass the check

    start = time.monotonic()
    done = _ddp_run(tmp_path, (bad, clean), timeout=300)  # two start-ups on a loaded 2-core machine
    seconds = time.monotonic() - start
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-5000:]
    assert "Starting with 2 processes" in out or "Initializing distributed: GLOBAL_RANK: 1" in out, out[-3000:]
    received = VERDICT_LINE.search(out)
    assert received, out[-5000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], errors  # rank 0 and rank 1 print the same first line
    # the message names rank 0's files, which rank 1 never read
    assert str(corrupt[0]) in done.stderr and done.stderr.count(str(corrupt[0])) == 2, done.stderr[-3000:]
    waited = float(received.group(2))
    # from rank 1's verdict to the end of both processes (rank 1 leaves after rank 0, whose interpreter shutdown
    # takes seconds); a rank left waiting would only stop at the 30-min process-group timeout
    stopped_after = time.time() - datetime.strptime(received.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert waited < 5.0 and stopped_after < 60.0, (waited, stopped_after)
    print(f"bad-data verdict reached rank 1 {waited:.3f} s after it asked; both ranks gone {stopped_after:.1f} s "
          f"later; whole command {seconds:.1f} s")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.metrics["data/unreadable"] == len(corrupt)


@pytest.mark.slow
def test_good_data_trains_under_two_processes(tmp_path):
    tree = make_genimage_tree(tmp_path / "genimage", n=4, size=32)
    done = _ddp_run(tmp_path, (tree, tree), timeout=240)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert not VERDICT_LINE.search(out)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "test/auc" in runs[0].data.metrics
