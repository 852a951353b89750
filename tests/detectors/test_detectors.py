"""Every detector: output shape, backward pass, freezing, and learning a separable toy set."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from detectors.backbones import PretrainedWeightsUnavailable, create_backbone
from detectors.localfft_resnet import LocalFFTResNet
from detectors.streams import SpectraForgeDual
from tests.conftest import compose_config, fit_auroc, toy_set

TINY_BACKBONES = {"resnet34_localfft": "resnet10t", "spectraforge_dual": "resnet10t",
                  "efficientnet_spatial": "tinynet_e"}
# EfficientNet's stride-2 stem aliases a period-2 trace away at 32 px; it gets 64 px
TOY_SIZE = {"resnet34_localfft": 32, "spectraforge_dual": 32, "efficientnet_spatial": 64}


def tiny_net(model: str, tmp_path) -> torch.nn.Module:
    cfg = compose_config([f"model={model}", f"model.backbone.name={TINY_BACKBONES[model]}"], tmp_path)
    if model == "resnet34_localfft":
        cfg.model.net.patch_size = 16
    cfg.model.net.head_hidden = 32 if model != "efficientnet_spatial" else 0
    return instantiate(cfg.model.net)


@pytest.mark.parametrize("model", sorted(TINY_BACKBONES))
def test_shape_backward_and_features(model, tmp_path):
    net = tiny_net(model, tmp_path)
    x = torch.rand(2, 3, 32, 32, requires_grad=False)
    logits = net(x)
    assert logits.shape == (2,)
    assert net.forward_features(x).ndim == 2
    logits.sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert set(net.cam_layers()) <= {"localfft", "spatial", "frequency"}


def test_localfft_freezes_stem_and_layer1():
    net = LocalFFTResNet(partial(create_backbone, name="resnet18", freeze_stages=1), patch_size=16)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1")) for n in frozen)
    assert any(n.startswith("backbone.layer1") for n in frozen)
    net.train()
    bn = torch.nn.BatchNorm2d  # frozen BatchNorm statistics stay fixed in training mode
    assert not any(m.training for m in net.backbone.layer1.modules() if isinstance(m, bn))
    assert not net.backbone.bn1.training
    assert all(m.training for m in net.backbone.layer2.modules() if isinstance(m, bn))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)
    torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & frozen
    assert any(n.startswith("backbone.layer4") for n in changed) and any(n.startswith("head") for n in changed)


def test_spectraforge_streams_are_separate():
    net = SpectraForgeDual(partial(create_backbone, name="resnet10t"), head_hidden=8)
    x = torch.rand(2, 3, 32, 32)
    s, f = net.forward_spatial(x), net.forward_frequency(x)
    assert torch.allclose(net.forward_features(x), torch.cat([s, f], 1))
    assert net.spatial.backbone is not net.frequency.backbone


def test_unknown_backbone_and_missing_weights_are_clear(tmp_path):
    with pytest.raises(ValueError, match="model.backbone.name='not_a_net'"):
        create_backbone("not_a_net")
    with pytest.raises(PretrainedWeightsUnavailable, match="model.backbone.weights_path"):
        create_backbone("resnet18", weights_path=str(tmp_path / "missing.pth"))


def test_local_weights_file_is_loaded(tmp_path):
    donor = create_backbone("resnet10t")
    path = tmp_path / "resnet10t.pth"
    torch.save(donor.state_dict(), path)
    loaded = create_backbone("resnet10t", pretrained=True, weights_path=str(path))
    for (n, a), (_, b) in zip(donor.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("model", sorted(TINY_BACKBONES))
def test_cnn_detector_learns_separable_toy_set(model, tmp_path):
    torch.manual_seed(0)
    assert fit_auroc(tiny_net(model, tmp_path), size=TOY_SIZE[model]) >= 0.9


@pytest.mark.parametrize("model", ["radial_angular_logreg", "fft_random_forest"])
def test_sklearn_detector_learns_separable_toy_set(model, tmp_path):
    cfg = compose_config([f"model={model}"], tmp_path)
    pipe = instantiate(cfg.model.estimator)
    x, y = toy_set(64, 32, seed=1)
    xt, yt = toy_set(64, 32, seed=2)
    pipe.fit(x, y.numpy())
    assert roc_auc_score(yt.numpy(), pipe.predict_proba(xt)[:, 1]) >= 0.9
