"""UnivFD: a linear probe on a frozen CLIP image encoder.

Ojha, Li and Lee, "Towards Universal Fake Image Detectors that Generalize Across Generative Models",
CVPR 2023: the image embedding of a frozen CLIP ViT-L/14 (OpenAI weights) is a feature space in which
real and synthetic images separate linearly, even for generators never seen in training, so only a
linear classifier is trained on top of it.

:class:`CLIPImageFeatures` is the frozen encoder as a stateless scikit-learn step (``open_clip_torch``;
any open_clip model and pretrained tag by config). The linear head is the pipeline's classifier
(``conf/model/clip_probe.yaml``: a logistic regression, i.e. one linear layer trained with the binary
cross-entropy). The encoder learns nothing, so its features can be cached per image
(``experiments.training.kinds.FrozenEncoderProbe``): a sweep over heads encodes each image once.

Weights come from open_clip's own source (the Hugging Face hub, cached under ``HF_HOME``); offline,
:func:`ensure_weights` stops the run with the exact weights and the ways to provide them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detectors.backbones import PretrainedWeightsUnavailable, hub_download, hub_offline
from detectors.sklearn_base import StatelessImageTransformer, as_image_tensor

#: CLIP's own normalisation (OpenAI's training set statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _plain(model_cfg: Any) -> Any:
    """A config node (OmegaConf, from Hydra) as plain dicts and lists; anything else unchanged."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else model_cfg


def _clip_help(model_name: str, pretrained: str, reason: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    where = f"Hugging Face hub id '{hub}'" if hub else f"URL {cfg.get('url', '?')}"
    return (
        f"CLIP weights '{model_name}' / pretrained='{pretrained}' (open_clip; {where}) {reason}.\n"
        f"Provide them in one of three ways:\n"
        f"  1. on a machine with internet, run `python -c \"import open_clip; open_clip.create_model('{model_name}', "
        f"pretrained='{pretrained}')\"` and copy the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) here, "
        f"or run once here with internet (HF_HUB_OFFLINE unset);\n"
        f"  2. download the weights file and run with model.estimator.features.weights_path=/path/to/file;\n"
        f"  3. a randomly initialised encoder (meaningless for UnivFD, for tests only): "
        f"model.estimator.features.pretrained=null."
    )


def ensure_weights(model_name: str = "ViT-L-14", pretrained: str | None = "openai", weights_path: str | None = None,
                   model_cfg: Any = None, **_: object) -> Path | None:
    """The local file of the encoder's weights, downloaded now when online and not yet cached.

    None when no weights are needed (``pretrained=None`` or a custom ``model_cfg``).

    Raises:
        PretrainedWeightsUnavailable: naming the model, the tag, the hub id and the keys to set.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsUnavailable(_clip_help(
                model_name, str(pretrained), f"are not at model.estimator.features.weights_path={weights_path}"))
        return path
    if not pretrained or model_cfg is not None:
        return None
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag '{pretrained}' for model '{model_name}'; see "
                         f"open_clip.list_pretrained() (model.estimator.features.model_name / .pretrained)")
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    try:
        if hub:
            for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                try:
                    return hub_download(hub, filename)
                except Exception:
                    if filename.endswith(".bin"):
                        raise
        if hub_offline():
            raise FileNotFoundError("offline and not on the hub cache")
        return Path(open_clip.download_pretrained(cfg))
    except Exception as err:
        raise PretrainedWeightsUnavailable(_clip_help(
            model_name, pretrained, "cannot be downloaded (offline?) and are not in the cache")) from err


def build_image_encoder(model_name: str = "ViT-L-14", pretrained: str | None = "openai",
                        weights_path: str | None = None, model_cfg: Any = None) -> torch.nn.Module:
    """The frozen, eval-mode image tower of an open_clip model.

    ``model_cfg`` (a mapping ``{embed_dim, vision_cfg}`` in open_clip's format) builds a custom, randomly
    initialised tower instead of ``model_name``: small ones for tests.
    """
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    if model_cfg is not None:
        cfg = dict(model_cfg)
        visual = _build_vision_tower(int(cfg["embed_dim"]), CLIPVisionCfg(**dict(cfg["vision_cfg"])))
    else:
        path = ensure_weights(model_name, pretrained, weights_path)
        source = str(path) if weights_path is not None else pretrained
        visual = open_clip.create_model(model_name, pretrained=source).visual
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    return visual


class CLIPImageFeatures(StatelessImageTransformer):
    """``(N, 3, H, W)`` images in [0, 1] -> ``(N, D)`` frozen CLIP image embeddings (UnivFD's feature space).

    Images are resized to the encoder's input size (bicubic, as CLIP's preprocessing) and normalised with
    CLIP's mean/std. The encoder is built on first use and never saved with the pipeline.

    Args:
        model_name: an open_clip model (UnivFD: ``ViT-L-14``).
        pretrained: an open_clip pretrained tag (UnivFD: ``openai``); None = random weights (tests).
        weights_path: a local weights file, used instead of the hub.
        model_cfg: a custom tower ``{embed_dim, vision_cfg}`` (random weights; tests).
        batch_size: images per encoder call.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    #: its weights check (before training, ``experiments.training.builders``) and the keys that turn the
    #: pretrained weights off (a randomly initialised encoder)
    ensure_weights = staticmethod(ensure_weights)
    without_weights = {"pretrained": None, "weights_path": None}

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai",
                 weights_path: str | None = None, model_cfg: Any = None, batch_size: int = 64,
                 device: str = "auto") -> None:
        self.model_name = model_name
        self.pretrained = pretrained
        self.weights_path = weights_path
        self.model_cfg = model_cfg
        self.batch_size = batch_size
        self.device = device

    def cache_id(self) -> str:
        """What the features depend on: the encoder and its weights (the key of the feature cache)."""
        cfg = json.dumps(_plain(self.model_cfg), sort_keys=True) if self.model_cfg is not None else None
        return f"clip|{self.model_name}|{self.pretrained}|{self.weights_path}|{cfg}"

    def _encoder(self) -> torch.nn.Module:
        encoder = self.__dict__.get("_encoder_module")
        if encoder is None:
            encoder = build_image_encoder(self.model_name, self.pretrained, self.weights_path, _plain(self.model_cfg))
            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
            encoder = encoder.to(device)
            self.__dict__["_encoder_module"] = encoder
        return encoder

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_encoder_module", None)  # weights stay in the hub cache; the pipeline stays small and safe
        state["model_cfg"] = _plain(state.get("model_cfg"))  # plain types only in the saved (skops) file
        return state

    @torch.no_grad()
    def transform(self, X) -> np.ndarray:  # noqa: N803 - sklearn naming
        images = as_image_tensor(X)
        encoder = self._encoder()
        device = next(encoder.parameters()).device
        size = encoder.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start:start + self.batch_size].to(device)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(encoder((x - mean) / std).float().cpu())
        return torch.cat(out).numpy()
