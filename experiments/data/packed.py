"""``data=packed``: train and evaluate from a pack written by ``task=pack`` (:mod:`experiments.data.shards`).

The pack's own metadata gives the splits, generators and class names (no folder is walked): ``data.root`` is
the pack's folder or URL (``s3://...``; LitData streams the chunks into ``cache_dir``). Encoded packs are
decoded and preprocessed in the loader workers with this config's ``Preprocess`` (``crop_size``,
``resize_size``, ``random_crop``, ``equalizer``, ``train_augment``), exactly as files are; decoded packs hold
the crops of the preprocessing they were packed with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from experiments.data.audit import BadDataError
from experiments.data.datamodule import DetectorDataModule
from experiments.data.layouts import DatasetLayoutError, Sample
from experiments.data.shards import DECODED, PackedSplit, PackInfo, is_remote, join, read_entries, read_info, samples_of

log = logging.getLogger(__name__)


class PackedDataModule(DetectorDataModule):
    """:class:`DetectorDataModule` over the splits of a pack at ``root`` (folder or URL).

    ``generators``, ``test_generators``, ``exclude_generators`` and ``max_per_class`` are chosen when packing
    (``task=pack`` with the layout's config); here they are not applied again. ``cache_dir`` holds the chunks
    LitData streams from a remote pack.
    """

    def __init__(self, name: str, root: str | Path, **kwargs: Any) -> None:
        kwargs.pop("layout", None)
        super().__init__(name, root, **kwargs)
        self.location = str(root)
        self.info: PackInfo | None = None

    def pack_info(self) -> PackInfo:
        """``pack.json`` of the pack (read once); a clear error when ``root`` is not a pack."""
        if self.info is None:
            if not is_remote(self.location) and not Path(self.location).is_dir():
                raise DatasetLayoutError(f"data=packed: data.root={self.location} does not exist. Write a pack "
                                         f"with `python run.py task=pack data=<layout> data.root=/path/to/dataset "
                                         f"pack.out={self.location}`")
            self.info = read_info(self.location)
        return self.info

    def scan(self) -> dict[str, list[Sample]]:
        info = self.pack_info()
        splits = samples_of(read_entries(self.location), info.root)
        for split in ("train", "val", "test"):
            labels = {s.label for s in splits.get(split, [])}
            if labels != {0, 1}:
                raise DatasetLayoutError(
                    f"the {split} split of the pack {self.location} has {len(splits.get(split, []))} images and "
                    f"classes {sorted(labels)}; both real and synthetic images are needed. Re-pack the dataset.")
        return splits

    def prepare_data(self) -> None:
        self.pack_info()

    def preflight(self, settings=None, on_report=None) -> None:
        """The data gate of a pack (:meth:`check_unusable`): its files were checked when it was packed
        (``pack.json``), so no report; ``settings`` and ``on_report`` are not used."""
        self.check_unusable()
        return None

    def check_unusable(self) -> None:
        """The data gate of a pack: :class:`~experiments.data.audit.BadDataError` when more than
        ``max_bad_fraction`` of its files were found unusable when it was packed (``pack.json``); the files
        themselves are not read again. A decoded pack also counts the images smaller than the crop."""
        info = self.pack_info()
        total = sum(info.counts.values())
        if total and info.n_bad / total > self.max_bad_fraction:
            shown = [f"  {s}: {b.relpath} ({b.reason})" for s, bad in info.bad.items() for b in bad][:10]
            raise BadDataError(f"{info.n_bad} of {total} images ({info.n_bad / total:.2%}) of the pack "
                               f"{self.location} cannot be used, more than data.max_bad_fraction="
                               f"{self.max_bad_fraction}:\n" + "\n".join(shown)
                               + "\nFix or remove these files and pack again, or allow more with "
                               "data.max_bad_fraction=<fraction>.")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        info = self.pack_info()
        self.check_layout()
        self.generator_names = list(info.generators)
        if info.mode == DECODED and info.preprocess != repr(self.preprocess):
            log.warning("data=packed: the pack holds crops of %s; the data config's preprocessing (%r) is not "
                        "applied", info.preprocess, self.preprocess)
        cache = str(self.cache_dir / "streaming") if is_remote(self.location) else None
        for split, samples in self.splits.items():
            prep = None if info.mode == DECODED else self.preprocess_of(split)
            self.datasets[split] = PackedSplit(samples, join(self.location, split), self.generator_names, prep,
                                               cache_dir=cache, bad=info.bad.get(split, []),
                                               crop=info.crop if info.mode == DECODED else None)
        log.info("data=%s root=%s (%s pack, %d unusable files)\n%s", self.name, self.location, info.mode,
                 info.n_bad, self.summary())
