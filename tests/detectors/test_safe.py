"""SAFE (Li et al., KDD 2025): the truncated ResNet on the Haar HH band: shapes, parameter count, what it sees,
its config (optimiser, schedule, the transformations it selects, the demo preset), learning a separable toy set
and training through the composed config."""

from __future__ import annotations

import mlflow
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from detectors.safe import SAFEResNet
from experiments.data.augment import SAFEAugment
from experiments.evaluation.gradcam import stream_cams
from experiments.tasks.train import train
from tests.conftest import compose_config, fit_auroc, make_genimage_tree

#: the CPU-sized network of conf/model_preset/safe_demo.yaml
DEMO_NET = {"blocks": [1, 1], "stem_width": 32}


def test_detector_shapes_and_the_papers_parameter_count():
    net = SAFEResNet()
    x = torch.rand(2, 3, 32, 32)
    assert net.bands(x).shape == (2, 3, 32, 32)  # the HH band, resized back to the crop
    assert SAFEResNet(upsample=False).bands(x).shape == (2, 3, 16, 16)
    assert SAFEResNet(bands=["LH", "HL", "HH"]).stem[0].in_channels == 9
    assert net.forward_features(x).shape == (2, 512) and net.num_features == 512
    logits = net(x)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert [len(s) for s in net.stages] == [3, 4] and net.stem[0].kernel_size == (3, 3)
    assert set(net.cam_layers()) == {"dwt"} and net.cam_layers()["dwt"] is net.stages.layer2
    assert sum(p.numel() for p in net.parameters()) == 1_437_761  # NPR's trunk and head on 3 input channels
    assert stream_cams(net.eval(), torch.rand(2, 3, 32, 32))["dwt"].shape == (2, 32, 32)


def test_detector_sees_only_the_hh_band():
    """Any f(row) + g(column) has a zero HH band ((a - b - c + d) / 2 cancels it), so adding one to an image
    leaves the logits unchanged; the band itself is the bilinear resize of the Haar HH map."""
    net = SAFEResNet(**DEMO_NET).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    separable = torch.rand(2, 3, 32, 1) + torch.rand(2, 3, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x + separable), net(x), rtol=1e-4, atol=1e-4)
        a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
        expected = F.interpolate((a - b - c + d) / 2, size=(32, 32), mode="bilinear", align_corners=False)
        torch.testing.assert_close(net.bands(x), expected)
    with pytest.raises(ValueError, match="data.crop_size"):
        net(torch.rand(1, 3, 31, 32))
    with pytest.raises(ValueError, match="model.net.blocks"):
        SAFEResNet(blocks=[])


def test_config_builds_the_paper_detector_with_its_transformations(tmp_path):
    cfg = compose_config(["model=safe"], tmp_path)
    assert cfg.model.name == "safe" and "backbone" not in cfg.model
    net = instantiate(cfg.model.net)
    assert isinstance(net, SAFEResNet) and net.dwt.bands == ("HH",) and net.upsample and len(net.stages) == 2
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == pytest.approx(1e-2 * 32 / 256)
    assert optimizer.defaults["weight_decay"] == pytest.approx(0.01)
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 50
    assert cfg.data.resize_size is None and cfg.data.random_crop is True  # crop, not resize
    augment = instantiate(cfg.data.train_augment)
    assert isinstance(augment, SAFEAugment) and augment.crop_size == cfg.data.crop_size
    demo = compose_config(["model=safe", "experiment=demo"], tmp_path)
    assert demo.model.net.blocks == DEMO_NET["blocks"] and demo.model.net.stem_width == DEMO_NET["stem_width"]
    assert demo.model.scheduler.T_max == demo.trainer.max_epochs and demo.data.train_augment.crop_size == 64
    other = compose_config(["model=safe", "augment=cnndetection"], tmp_path)
    assert other.data.train_augment._target_.endswith("CNNDetectionAugment")
    assert compose_config(["model=npr"], tmp_path).data.train_augment is None  # the others are left alone


def test_detector_learns_separable_toy_set():
    """The toy fakes carry a +-12 grey-level period-2 checkerboard, whose HH band is 24 / 255 everywhere: 3 steps
    already reach AUROC 1.0 for init seeds 0-2, so 5 steps keep the test short."""
    torch.manual_seed(0)
    assert fit_auroc(SAFEResNet(**DEMO_NET), size=32, steps=5) >= 0.9


def test_trains_through_the_composed_config_with_its_augmentation(tmp_path):
    tree = make_genimage_tree(tmp_path / "genimage", n=6, size=40)
    cfg = compose_config(["model=safe", "data=genimage_tiny", f"data.root={tree}", "data.crop_size=32",
                          "data.batch_size=8", "data.num_workers=0", "debug=fdr", "diagnostics=false",
                          "model.net.blocks=[1,1]", "model.net.stem_width=32"], tmp_path)
    assert cfg.data.train_augment._target_.endswith("SAFEAugment")
    best = train(cfg)
    assert best is not None and 0.0 <= best <= 1.0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["model/name"] == "safe" and "test/auc" in runs[0].data.metrics
