"""``data.cache=true`` under DDP (2 gloo processes on the CPU): Lightning's ``prepare_data`` on the local rank 0
builds the decoded packs once, the other rank waits in Lightning's barrier, and both ranks read the same packs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_genimage_tree

ROOT = Path(__file__).resolve().parents[2]

#: one rank of a 2-process DDP fit, started by the test (``LOCAL_RANK`` set: Lightning joins, it does not launch).
#: Before ``fit`` it does what ``task=train`` does (``prepare_tree``, ``check_layout``); every pack written is
#: counted by wrapping ``experiments.data.cache.write_pack``.
RANK_SCRIPT = r'''
import json, os, sys
import lightning as L
import torch
import experiments.data.cache as cache
from experiments.data.datamodule import DetectorDataModule

root, out = sys.argv[1], sys.argv[2]
rank = int(os.environ["LOCAL_RANK"])
written = []
real_write_pack = cache.write_pack
def counting_write_pack(splits, folder, *args, **kwargs):
    written.append(str(folder))
    return real_write_pack(splits, folder, *args, **kwargs)
cache.write_pack = counting_write_pack

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
    def training_step(self, batch, batch_idx):
        return ((self.w - batch["image"].float().mean() / 255) ** 2).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

dm = DetectorDataModule(name="t", root=root, crop_size=32, resize_size=None, batch_size=4, num_workers=0,
                        cache=True, cache_dir=os.path.join(out, "cache"))
dm.prepare_tree()  # what task=train does before the trainer exists
dm.check_layout()
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0)
trainer.fit(Tiny(), datamodule=dm)
read = {split: (type(ds).__name__, str(dm._packs.get(split)))
        for split, ds in dm.datasets.items()}
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"written": written, "read": read, "global_rank": trainer.global_rank}, f)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_cache_is_built_by_local_rank_zero_once_and_read_by_both(tmp_path):
    tree = make_genimage_tree(tmp_path / "g", n=3, size=32)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
            "NODE_RANK": "0", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    ranks = [subprocess.Popen([sys.executable, str(script), str(tree), str(out)], cwd=ROOT,
                              env={**base, "LOCAL_RANK": str(r), "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=120)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n---\n".join(log[-3000:] for log in logs)
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [g["global_rank"] for g in got] == [0, 1]
    assert len(got[0]["written"]) == 3, got[0]  # train, val, test: one pack each, by local rank 0
    assert got[1]["written"] == [], "rank 1 must not write a pack: it waits in Lightning's barrier"
    for g in got:  # both ranks read every split from the packs rank 0 wrote
        assert {split: kind for split, (kind, _) in g["read"].items()} == dict.fromkeys(("train", "val", "test"),
                                                                                      "PackedSplit")
        assert sorted(folder for _, folder in g["read"].values()) == sorted(got[0]["written"])
