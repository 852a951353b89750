"""Lightning's progress: Rich bars on a terminal; in logs a line every 10 % or 30 s and one line per epoch."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from experiments import process
from experiments.training.progress import LogProgressBar, epoch_line, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x).squeeze(1), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x).squeeze(1), y))

    def on_train_epoch_end(self) -> None:  # as DetectorModule: the epoch's training metric, after the callbacks'
        self.log("train/loss", torch.tensor(0.25))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_bar_is_rich_on_a_terminal_and_log_lines_elsewhere(monkeypatch):
    monkeypatch.delenv("SUITE_PROGRESS", raising=False)
    monkeypatch.setattr(process, "sys", SimpleNamespace(stderr=Terminal()))
    assert isinstance(progress_bar(), RichProgressBar)
    monkeypatch.setattr(process, "sys", SimpleNamespace(stderr=io.StringIO()))
    assert isinstance(progress_bar(), LogProgressBar)


def test_epoch_line_gives_the_scalar_metrics_by_name():
    line = epoch_line(2, {"val/auc": torch.tensor(0.93128), "train/loss": 0.5, "bad": torch.ones(3)})
    assert line == "epoch 2: train/loss 0.5, val/auc 0.9313"


def test_training_off_a_terminal_logs_plain_lines_and_one_line_per_epoch(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    data = TensorDataset(torch.randn(400, 4), torch.randn(400))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[LogProgressBar()], default_root_dir=tmp_path,
                        num_sanity_val_steps=1)
    trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=40))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("experiments.")]
    written = capsys.readouterr()
    assert "\r" not in written.err + written.out + "\n".join(lines)
    train_lines = [ln for ln in lines if ln.startswith("epoch 0: train: ")]
    assert 10 <= len(train_lines) <= 11 and train_lines[-1].startswith("epoch 0: train: 100/100 batch (100%)")
    assert any(ln.startswith("epoch 1: val: 10/10 batch (100%)") for ln in lines)
    epochs = [ln for ln in lines if ln.startswith("epoch ") and "/loss " in ln]
    assert [ln.split(":")[0] for ln in epochs] == ["epoch 0", "epoch 1"]
    assert all("train/loss 0.25" in ln and "val/loss" in ln for ln in epochs)
