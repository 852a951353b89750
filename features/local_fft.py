"""Local patch-wise FFT log-magnitude maps.

Synapse-7 ("AI-Generated Image Detection using Frequency Domain Analysis"):
the image is cut into non-overlapping ``patch x patch`` tiles, each tile goes
through a 2-D FFT, its log-magnitude is taken, and the tiles are stitched back
into a "frequency map" of the input's size, which a ResNet-34 then classifies.
Up-sampling layers of GAN and diffusion decoders leave periodic peaks in these
local spectra (Zhang et al., 2019; Frank et al., 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from features.batching import check_image_batch, fill_cpu_chunks
from features.precision import autocast_immune
from features.spectrum import hermitian_full, rfft_log_magnitude


class LocalPatchFFT(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, C, H, W)`` per-patch log-magnitude spectra.

    Args:
        patch_size: side of the square tiles (32 in Synapse-7).
        shift: move each tile's zero frequency to the tile centre (``fftshift``).

    ``H`` and ``W`` must be multiples of ``patch_size``. Batched: one ``rfft2`` call
    over every tile of every image (no Python loop over tiles or images); the
    mirrored half of each tile's spectrum is filled in by symmetry.
    """

    def __init__(self, patch_size: int = 32, in_chans: int = 3, shift: bool = True) -> None:
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"patch_size must be >= 2, got {patch_size}")
        self.patch_size = int(patch_size)
        self.in_chans = int(in_chans)
        self.shift = shift

    @property
    def out_chans(self) -> int:
        return self.in_chans

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, "LocalPatchFFT")
        b, c, h, w = x.shape
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(
                f"LocalPatchFFT: input {h}x{w} is smaller than the patch size {p}; "
                f"use a larger data.crop_size or a smaller model.net.patch_size"
            )
        if h % p or w % p:
            raise ValueError(
                f"LocalPatchFFT: input {h}x{w} is not a multiple of the patch size {p}; "
                f"set data.crop_size to a multiple of {p}"
            )
        out = x.new_empty(b, c, h, w)
        fill_cpu_chunks(self._maps_into, x, out)
        return out

    def _maps_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        b, c, h, w = x.shape
        p = self.patch_size
        nh, nw = h // p, w // p
        tiles = x.reshape(b, c, nh, p, nw, p).permute(0, 1, 2, 4, 3, 5)  # B C nh nw p p (a view)
        out_tiles = out.view(b, c, nh, p, nw, p).permute(0, 1, 2, 4, 3, 5)
        hermitian_full(rfft_log_magnitude(tiles), p, shift=self.shift, out=out_tiles)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, shift={self.shift}"
