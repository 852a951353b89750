"""Backbone construction on top of timm, with ImageNet weights through timm's standard mechanism.

Every CNN detector gets its trunk from :func:`create_backbone`, so any timm model
name (``resnet34``, ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``, ...)
can be swapped in from the config. The number of input channels follows the
feature in front of it (timm's ``in_chans``), and the trunk returns pooled
features (``num_classes=0``) of size ``backbone.num_features``.

Pretrained weights (``pretrained=True``) come from the Hugging Face hub as timm
resolves them: downloaded on first use (with a progress bar) into the hub cache
(``HF_HOME``, default ``~/.cache/huggingface``) and read from there afterwards.
A timm name may carry a weight tag: ``resnet34`` means timm's default tag
(``resnet34.a1_in1k``, timm's own recipe), ``resnet34.tv_in1k`` the torchvision
weights that Synapse-7 and SPECTRAFORGE fine-tune. When the weights cannot be
had (offline, ``HF_HUB_OFFLINE=1``, no cache), :func:`ensure_weights` stops the
run before training with the exact weights, the hub id and the ways out.

Offline is told in a second, not after the hub client's minute of retries: ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) set, or one short TCP probe of the hub's endpoint (or of the proxy that serves
it) that gets no answer, once per process (:func:`hub_offline`); only the cache is read then.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import timm
from omegaconf import OmegaConf
from torch import nn
from timm.models import get_pretrained_cfg, group_parameters

log = logging.getLogger(__name__)


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but can be neither downloaded nor found in the cache."""

    user_error = True  # run.py prints the message alone (experiments.errors.is_user_error)


def weights_source(name: str) -> tuple[str, str | None, str | None]:
    """``(timm name with its weight tag, Hugging Face hub id, URL)`` of the weights timm loads for ``name``.

    ``resnet34`` resolves to timm's default tag (``resnet34.a1_in1k``); ``resnet34.tv_in1k`` stays as given.
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(
            f"model.backbone.name='{name}' has no pretrained weights in timm; see "
            f"timm.list_pretrained('{name.split('.')[0]}*'), or set model.backbone.pretrained=false"
        )
    architecture = name.split(".")[0]
    full = f"{architecture}.{cfg.tag}" if cfg.tag else architecture
    return full, cfg.hf_hub_id, cfg.url


def _weights_help(name: str, reason: str = "cannot be downloaded (offline?) and are not in the cache") -> str:
    try:
        full, hub_id, url = weights_source(name)
    except ValueError:
        full, hub_id, url = name, None, None
    where = f"Hugging Face hub id '{hub_id}'" if hub_id else f"URL {url}"
    first_use = f"timm.create_model('{full}', pretrained=True)"
    return (
        f"ImageNet weights '{full}' (timm name.tag; {where}) for model.backbone.name='{name}' {reason}.\n"
        f"Provide them in one of three ways:\n"
        f"  1. on a machine with internet, run `python -c \"import timm; {first_use}\"` and copy the Hugging Face "
        f"cache (HF_HOME, default ~/.cache/huggingface) here, or run once here with internet (HF_HUB_OFFLINE unset);\n"
        f"  2. download the state dict ({hub_id + ': model.safetensors' if hub_id else url}) and run with\n"
        f"     model.backbone.weights_path=/path/to/{full}.safetensors (or .pth);\n"
        f"  3. train from scratch with model.backbone.pretrained=false."
    )


#: the seconds the hub probe waits for a TCP connection (name lookup included) before calling the machine offline
HUB_PROBE_TIMEOUT = 1.5
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the Hugging Face hub is out of reach, so that only the cache is read: ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` is set, or the hub's endpoint does not take a TCP connection within
    :data:`HUB_PROBE_TIMEOUT` seconds (:func:`hub_reachable`, probed once per process)."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or any(os.environ.get(k, "").upper() in _TRUE
                                          for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    return not hub_reachable(constants.ENDPOINT)


def hub_reachable(endpoint: str) -> bool:
    """Whether ``endpoint`` (or the proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` names for it) takes a TCP connection
    within :data:`HUB_PROBE_TIMEOUT` seconds, name lookup included: one probe per address and process."""
    url = urlsplit(endpoint)
    host = url.hostname or ""
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = url.hostname or ""
    return _connects(host, url.port or (443 if url.scheme == "https" else 80))


def hub_download(repo_id: str, filename: str) -> Path:
    """The local file of ``filename`` in hub repo ``repo_id``: downloaded when online and not yet cached; offline
    (:func:`hub_offline`) from the cache alone, in huggingface_hub's own offline mode, so that no request of any
    kind (not even the client's user-agent lookup) is made and none is retried.

    Raises:
        huggingface_hub.errors.EntryNotFoundError: no such file (``LocalEntryNotFoundError``: not in the cache).
    """
    from huggingface_hub import constants, hf_hub_download

    if not hub_offline():
        return Path(hf_hub_download(repo_id, filename))
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    finally:
        constants.HF_HUB_OFFLINE = before


@lru_cache(maxsize=None)
def _connects(host: str, port: int) -> bool:
    """A TCP connection to ``host:port`` within :data:`HUB_PROBE_TIMEOUT` s, in a thread: a name lookup that
    hangs (no DNS answer) cannot hold the run up either."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT).close()
            answered.append(True)
        except Exception:  # noqa: BLE001 - whatever fails, the hub did not answer
            answered.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT + 0.5)
    reachable = bool(answered and answered[0])
    if not reachable:
        log.info("the Hugging Face hub (%s:%d) does not answer: pretrained weights are read from the cache only",
                 host, port)
    return reachable


def ensure_weights(name: str, pretrained: bool = False, weights_path: str | None = None, **_: object) -> Path | None:
    """Make sure the weights :func:`create_backbone` will load are at hand; return their local file.

    :func:`create_backbone`'s own weights check (``create_backbone.ensure_weights``), called before training
    (``experiments.training.builders.check_pretrained_weights``) so a missing file
    stops the run after the config, data and tracking checks and before anything is built. Online, a hub file
    not yet cached is downloaded now (timm's own source, with a progress bar); offline (:func:`hub_offline`:
    ``HF_HUB_OFFLINE=1`` or a hub that does not answer the probe) only the cache is read, without retries.
    Returns None when no weights are needed (``pretrained=False`` and no ``weights_path``).

    Raises:
        PretrainedWeightsUnavailable: with the timm name and tag, the hub id, ``model.backbone.weights_path``
            and ``model.backbone.pretrained=false``.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsUnavailable(
                _weights_help(name, f"are not at model.backbone.weights_path={weights_path} (no such file)"))
        return path
    if not pretrained:
        return None
    full, hub_id, url = weights_source(name)
    offline = hub_offline()
    try:
        if hub_id:
            from huggingface_hub.errors import EntryNotFoundError

            cfg = get_pretrained_cfg(name)
            filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for i, filename in enumerate(filenames):
                try:
                    return hub_download(hub_id, filename)
                except EntryNotFoundError:
                    if i == len(filenames) - 1:
                        raise
        if url and not offline:
            from huggingface_hub.utils import are_progress_bars_disabled
            from timm.models._hub import download_cached_file

            # a bar as the hub's own: off where its switch is (experiments.process.use_plain_logs, off a terminal)
            return Path(download_cached_file(url, check_hash=False, progress=not are_progress_bars_disabled()))
        raise FileNotFoundError(f"no cached file for {full}")
    except Exception as err:  # hub, HTTP and file errors all mean the same thing to the user
        raise PretrainedWeightsUnavailable(_weights_help(name)) from err


def create_backbone(
    name: str,
    in_chans: int = 3,
    pretrained: bool = False,
    weights_path: str | None = None,
    freeze_stages: int = -1,
    **kwargs,
) -> nn.Module:
    """Build a timm trunk that maps ``(B, in_chans, H, W)`` to ``(B, num_features)``.

    Args:
        name: any ``timm.list_models()`` name.
        in_chans: input channels; timm adapts pretrained stem weights when it differs from 3.
        pretrained: load ImageNet weights: from the Hugging Face cache, downloaded there on first use when online
            (see :func:`ensure_weights`). ``name`` may carry timm's weight tag, e.g. ``resnet34.tv_in1k``.
        weights_path: a local state dict file (``.pth``/``.bin``/``.safetensors``), used instead of the hub.
        freeze_stages: -1 freezes nothing; ``k >= 0`` freezes the stem and the first ``k`` stages, following
            timm's ``group_matcher`` (for ResNets, ``1`` freezes ``conv1``/``bn1`` and ``layer1``, as in Synapse-7).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``).
    """
    kwargs = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in kwargs.items()}
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(
            f"model.backbone.name='{name}' is not a timm model; see timm.list_models() for valid names"
        )
    if weights_path is not None or pretrained:
        # the file the weights check found (downloaded when online): timm reads it and asks the hub nothing more
        path = ensure_weights(name, pretrained, weights_path)
        try:
            model = timm.create_model(
                name, pretrained=True, num_classes=0, in_chans=in_chans,
                pretrained_cfg_overlay={"file": str(path)}, **kwargs,
            )
        except Exception as err:  # timm raises many types here (OSError, RuntimeError, key mismatches)
            raise PretrainedWeightsUnavailable(_weights_help(name, f"could not be loaded from {path}")) from err
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    if freeze_stages >= 0:
        if not pretrained and weights_path is None:
            log.warning(
                "model.backbone.freeze_stages=%d freezes the stem and %d stage(s) of a randomly initialised '%s': "
                "those layers will never learn. Set model.backbone.pretrained=true (or weights_path=...) or "
                "model.backbone.freeze_stages=-1.", freeze_stages, freeze_stages, name)
        freeze_leading_stages(model, freeze_stages)
    return model


#: the factory's own weights check, and the keys that turn its pretrained weights off (random initialisation);
#: ``experiments.training.builders`` finds both through the ``_target_`` of a config node.
create_backbone.ensure_weights = ensure_weights
create_backbone.without_weights = {"pretrained": False, "weights_path": None}


def freeze_leading_stages(model: nn.Module, stages: int) -> list[str]:
    """Freeze the stem and the first ``stages`` stages of a timm model; return the frozen parameter names."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    frozen = [n for group in ordered[: stages + 1] for n in group]
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    model._frozen_modules = _modules_of(model, frozen)  # kept in eval mode (BatchNorm statistics stay fixed)
    return frozen


def _modules_of(model: nn.Module, param_names: list[str]) -> list[str]:
    owners = {n.rsplit(".", 1)[0] for n in param_names}
    return sorted(owners)


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Put the modules frozen by :func:`freeze_leading_stages` back in eval mode (call after ``.train()``)."""
    for name in getattr(model, "_frozen_modules", []):
        model.get_submodule(name).eval()


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

