"""One LightningDataModule for every dataset layout and every detector."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerStatus
from torch.utils.data import DataLoader, DistributedSampler

from experiments.data.audit.preflight import PreflightSettings, preflight as scan_and_gate
from experiments.data.audit.report import DataReport
from experiments.data.audit.sampling import DataCheck
from experiments.data.cache import cached_pack, is_cacheable
from experiments.data.chronology import Chronology
from experiments.data.dataset import ImageDataset, SampleDataset, collate_skipping
from experiments.data.device_decode import EncodedImageDataset, collate_encoded
from experiments.data.layouts import DatasetLayoutError, GenImageFlat, Layout, Sample, Selection, limit_per_class
from experiments.data.shards import PackedSplit, read_info
from experiments.data.transforms import Preprocess
from experiments.data.walk import ImageWalk, SkippedLink, collector_paused
from experiments.process import default_cache_dir

log = logging.getLogger(__name__)

DECODE_MODES = ("cpu", "device")
#: the most loader workers :func:`default_num_workers` picks per device.
MAX_AUTO_WORKERS = 16


def default_num_workers(devices_per_node: int = 1) -> int:
    """Loader workers per training process: the CPU cores this process may use, divided among the devices of
    the node (one process each under DDP), at most :data:`MAX_AUTO_WORKERS`; 0 on a single core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(MAX_AUTO_WORKERS, max(0, cores // max(1, devices_per_node)))


def missing_root_error(name: str) -> DatasetLayoutError:
    """The error for a dataset config whose ``data.root`` is not set."""
    return DatasetLayoutError(
        f"data.root is not set for data={name}. Pass the dataset folder, e.g. "
        f"`python run.py data={name} data.root=/path/to/{name}`"
    )


class DetectorDataModule(L.LightningDataModule):
    """Train / val / test loaders of ``{"image", "label", "generator"}`` batches.

    Splits: the layout's (``conf/data/<name>.yaml`` chooses it by ``_target_``): for the GenImage layouts the
    suite's test split is GenImage's ``val`` folder and the suite's val split is a seeded hold-out of ``train``
    (``val_fraction``); for the manifest the CSV's split column, with the same hold-out when it has no val rows;
    for CNNDetection and derm the three folders are used as they are.

    Args:
        name: dataset name, used in experiment names and reports.
        root: dataset root, set (the builder checks ``data.root`` before it builds the datamodule); ``python -m
            experiments.data.layout_trees`` prints the expected trees.
        layout: the folder layout (:mod:`experiments.data.layouts`); None = :class:`GenImageFlat` (Tiny GenImage).
        generators: generators of the train and val splits (None = all); for CNNDetection they must
            include its ``train_generator``.
        test_generators: generators of the test split (None = ``generators``), for cross-generator protocols.
        exclude_generators: generators left out of the train and val splits (the held-out generator of
            ``experiment=leave_one_out``).
        generator_order: the generators' release order, oldest first (``experiment=chronological``); None = the
            layout's dates (a manifest's ``date`` column) when ``train_first`` is set.
        train_first: train and validate on the first ``train_first`` generators of the release order and test on
            every later one (:class:`~experiments.data.chronology.Chronology`, kept as :attr:`chronology`; it
            replaces ``generators`` and ``test_generators``); None = no chronological split.
        crop_size, resize_size: preprocessing sizes (Synapse-7: 224, 256).
        batch_size: images per batch (Synapse-7: 96).
        num_workers: loader processes; None (``auto``) = the CPU cores this process may use, shared among the
            devices of this node, at most 16 (:func:`default_num_workers`).
        pin_memory: page-locked batches for faster, asynchronous host-to-device copies; None = when training on CUDA.
        persistent_workers, prefetch_factor: keep the workers between epochs, and batches each worker prepares
            ahead (PyTorch's loader settings; Lightning recommends persistent workers).
        decode: ``"cpu"`` decodes and preprocesses in the loader workers; ``"device"`` sends the JPEG files'
            bytes and decodes them batched on the model's device (``torchvision.io.decode_jpeg``, nvJPEG on
            CUDA), see :mod:`experiments.data.device_decode`. Other formats, and runs with an equalizer or an
            augmentation, stay on the CPU.
        val_fraction: hold-out fraction of the GenImage train folder.
        max_per_class: cap per (generator, class) and split, for quick runs (None = all).
        random_crop: random instead of centre crop for training.
        equalizer: optional PIL -> PIL leakage equaliser applied to every split.
        train_augment: optional PIL -> PIL augmentation for the training split only.
        demo: when set, ``prepare_data`` builds the embedded demo data into ``root`` with these keyword arguments.
        max_bad_fraction: fraction of unreadable or too-small files tolerated before training stops.
        split_seed: seed of the deterministic hold-out split (kept apart from the training seed, so a
            multi-seed sweep measures training variance on one fixed split).
        cache: decode and preprocess each split once into a decoded LitData pack and read batches from it
            (``experiments.data.cache``, :mod:`experiments.data.shards`); built in :meth:`prepare_data`. Splits
            with random preprocessing (``random_crop``, ``train_augment``) are still read from the files.
        cache_dir: where the cache lives (the configs pass ``paths.cache_dir``; None =
            ``$XDG_CACHE_HOME/spectral-detector-suite``); never inside the dataset, which may be read-only.
        follow_symlinks: follow symlinks whose target lies outside ``root`` (default: skip them, count them as
            "link leaves the dataset" and list them in the data check; :mod:`experiments.data.walk`). Links inside
            ``root`` are always followed, each folder entered once.
        check: how much the data check reads, ``auto``, ``full``, ``sample:N`` or ``off``
            (:class:`~experiments.data.audit.sampling.DataCheck`).
        walk_index_dir: keep the folder listings of the walk there (:class:`~experiments.data.walk.WalkIndex`),
            so the jobs of a sweep list the tree once (None = list it every time).
        verify: a manifest (:mod:`experiments.data.integrity`) that ``task=check_data`` checks the tree against.

    Under DDP the val and test loaders use Lightning's ``UnrepeatedDistributedSampler``: each image is
    scored by exactly one rank (no padding duplicates), so the torchmetrics computed over the gathered
    predictions equal a single-process evaluation.
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        layout: Layout | None = None,
        generators: Sequence[str] | None = None,
        test_generators: Sequence[str] | None = None,
        exclude_generators: Sequence[str] | None = None,
        generator_order: Sequence[str] | None = None,
        train_first: int | None = None,
        crop_size: int = 224,
        resize_size: int | None = 256,
        batch_size: int = 96,
        num_workers: int | str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 4,
        decode: str = "cpu",
        val_fraction: float = 0.1,
        max_per_class: int | None = None,
        random_crop: bool = False,
        equalizer: Callable | None = None,
        train_augment: Callable | None = None,
        demo: dict[str, Any] | None = None,
        split_seed: int = 0,
        max_bad_fraction: float = 0.01,
        cache: bool = False,
        cache_dir: str | None = None,
        follow_symlinks: bool = False,
        check: str = "auto",
        walk_index_dir: str | None = None,
        verify: str | None = None,
    ) -> None:
        super().__init__()
        if decode not in DECODE_MODES:
            raise ValueError(f"data.decode='{decode}' is not one of {DECODE_MODES}")
        if num_workers not in (None, "auto") and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"data.num_workers must be a number >= 0 or auto, got {num_workers!r}")
        self.name = name
        self.root = Path(root)
        self.layout = layout if layout is not None else GenImageFlat()
        #: the chronological split (``train_first``), whose :meth:`~Chronology.tags` the training run carries
        self.chronology: Chronology | None = None
        if train_first is not None:
            order = list(generator_order) if generator_order else self.layout.release_order(self.root)
            self.chronology = Chronology(tuple(order), int(train_first))
            generators, test_generators = self.chronology.train, self.chronology.later
        self.selection = Selection(
            generators=list(generators) if generators else None,
            test_generators=list(test_generators) if test_generators else None,
            exclude_generators=frozenset(exclude_generators or ()),
            val_fraction=val_fraction,
            split_seed=split_seed,
        )
        self.batch_size = batch_size
        self.num_workers_setting = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = int(prefetch_factor)
        self.decode = decode
        self.max_per_class = max_per_class
        self.demo = dict(demo) if demo else None
        self.max_bad_fraction = max_bad_fraction
        self.follow_symlinks = bool(follow_symlinks)
        self.check = str(DataCheck.parse(check))
        self.walk_index_dir = Path(walk_index_dir) if walk_index_dir else None
        self.verify = verify
        #: the symlinks the scan did not follow (:class:`~experiments.data.walk.SkippedLink`), set by :meth:`scan`
        self.skipped_links: list[SkippedLink] = []
        self.cache = bool(cache)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.preprocess = Preprocess(crop_size, resize_size, random_crop=False, equalizer=equalizer)
        self.train_preprocess = Preprocess(
            crop_size, resize_size, random_crop=random_crop, equalizer=equalizer, augment=train_augment
        )
        self.splits: dict[str, list[Sample]] = {}
        self.generator_names: list[str] = []
        self.datasets: dict[str, SampleDataset] = {}
        self._decode_warnings: set[str] = set()
        self._packs: dict[str, Path] = {}

    # -- Lightning hooks -------------------------------------------------------------------------
    def prepare_tree(self) -> None:
        """Build the demo data (``data=demo``): what the walk (:meth:`check_layout`) needs, and all a task does
        before it; the packs wait for :meth:`prepare_data`."""
        if self.demo is not None:
            from experiments.data.demo import build_demo_dataset

            build_demo_dataset(self.root, **self.demo)

    def prepare_data(self) -> None:
        """Build the demo data (:meth:`prepare_tree`) and the decoded packs of ``data.cache=true``. Under
        ``trainer.fit`` Lightning calls it on the local rank 0 of every node (``prepare_data_per_node=True``), so
        with a node-local ``paths.cache_dir`` each node builds its own pack once, while the other ranks wait in
        Lightning's barrier (``torch.distributed``) and then read it in :meth:`setup`."""
        self.prepare_tree()
        if self.cache:
            for split in self.check_layout():
                self._cached_pack(split)

    def _cached_pack(self, split: str) -> Path | None:
        """The decoded pack of ``split`` (built when missing), or None when its preprocessing is random; its
        folder is kept, so :meth:`setup` after :meth:`prepare_data` does not stat the files again."""
        prep = self.preprocess_of(split)
        if not is_cacheable(prep):
            return None
        if split not in self._packs:
            self._packs[split] = cached_pack(split, self.splits[split], prep, self.cache_dir, root=self.root,
                                             class_names=self.layout.class_names)
        return self._packs[split]

    def preflight(self, settings: PreflightSettings = PreflightSettings(),
                  on_report: Callable[[DataReport], None] | None = None) -> DataReport | None:
        """The data gate before training (:func:`~experiments.data.audit.preflight.preflight`: scan, probe,
        verdict) with ``settings`` (:class:`~experiments.data.audit.preflight.PreflightSettings`); returns the
        :class:`~experiments.data.audit.report.DataReport`, or None for a datamodule whose files are checked
        otherwise (a pack). Raises :class:`~experiments.data.audit.preflight.BadDataError` on bad data."""
        return scan_and_gate(self, settings, on_report)

    def check_layout(self) -> dict[str, list[Sample]]:
        """The splits of :meth:`scan`, scanned once and kept for :meth:`setup`: the layout and class-count errors
        (:class:`DatasetLayoutError`, with the expected tree) at the cost of a walk, no image opened."""
        if not self.splits:
            self.splits = self.scan()
            self.generator_names = sorted({s.generator for split in self.splits.values() for s in split})
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, samples in self.check_layout().items():
            prep = self.preprocess_of(split)
            folder = self._cached_pack(split) if self.cache else None
            if folder is not None:
                info = read_info(folder)
                self.datasets[split] = PackedSplit(samples, str(folder / split), self.generator_names, None,
                                                   bad=info.bad[split], crop=info.crop)
            else:
                if self.cache:
                    log.info("data.cache: the %s split has random preprocessing; it is read from the files", split)
                self.datasets[split] = ImageDataset(samples, prep, self.generator_names)
        log.info("data=%s root=%s\n%s", self.name, self.root, self.summary())

    def scan(self) -> dict[str, list[Sample]]:
        """Scan the tree into the suite's train / val / test splits (deterministic)."""
        walk = ImageWalk(self.root, self.follow_symlinks, index_dir=self.walk_index_dir)
        with collector_paused():
            train, val, test = self.layout.splits(self.root, self.selection, walk)
        walk.save_index()
        if walk.index is not None:  # a later job of a sweep lists no folder: it reads the index
            log.info("data=%s: walk of %s: %d folder(s) listed from the disk, the others read from the walk index %s",
                     self.name, self.root, walk.index.listed, walk.index.path)
        self.skipped_links = walk.skipped
        if walk.skipped:
            reasons = Counter(link.reason for link in walk.skipped)
            log.warning("data=%s: %d symlink(s) not followed (%s), e.g. %s -> %s; task=check_data lists them%s",
                        self.name, len(walk.skipped), ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())),
                        walk.skipped[0].path, walk.skipped[0].target,
                        "" if self.follow_symlinks else "; data.follow_symlinks=true follows links out of the dataset")
        seed = self.selection.split_seed
        splits = {
            "train": limit_per_class(train, self.max_per_class, seed),
            "val": limit_per_class(val, self.max_per_class, seed),
            "test": limit_per_class(test, self.max_per_class, seed),
        }
        real, fake = self.layout.class_names
        for split, samples in splits.items():
            labels = {s.label for s in samples}
            if labels != {0, 1}:
                raise DatasetLayoutError(
                    f"the {split} split of {self.root} has {len(samples)} images and classes {sorted(labels)}; "
                    f"both real ({real}) and synthetic ({fake}) images are needed"
                )
        return splits

    def summary(self) -> str:
        lines = [f"{'split':<6} {'generator':<24} {'real':>7} {'fake':>7}"]
        for split, samples in self.splits.items():
            counts = Counter((s.generator, s.label) for s in samples)
            for gen in sorted({g for g, _ in counts}):
                lines.append(f"{split:<6} {gen:<24} {counts[(gen, 0)]:>7} {counts[(gen, 1)]:>7}")
        return "\n".join(lines)

    def counts(self) -> dict[str, int]:
        return {f"data/{split}_images": len(samples) for split, samples in self.splits.items()}

    # -- loaders ---------------------------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """``data.num_workers``, with ``auto`` resolved for the attached trainer's devices on this node."""
        if self.num_workers_setting not in (None, "auto"):
            return int(self.num_workers_setting)
        trainer = getattr(self, "trainer", None)
        return default_num_workers(trainer.num_devices if trainer is not None else 1)

    def _pin(self) -> bool:
        """``pin_memory=None``: pin only when batches go to a CUDA device (the trainer's, once attached)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _worker_context(self) -> Any:
        """The start method for loader workers: the platform's default one.

        A job run by ``hydra/launcher=local_parallel`` lives in a joblib (loky) worker whose default start
        method is ``loky``, which cannot start DataLoader workers; those jobs get the platform default
        (``fork`` on Linux) instead. Everywhere else the process default is kept.
        """
        if self.num_workers == 0:
            return None
        method = multiprocessing.get_start_method(allow_none=True)
        if method is None or method in multiprocessing.get_all_start_methods():
            return None
        return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])

    def _eval_sampler(self, split: str) -> DistributedSampler | None:
        """Inside a running multi-process trainer, an unrepeated sampler for val/test: every image once, on one
        rank. Lightning's default ``DistributedSampler`` pads the split with duplicates to equal rank sizes, which
        skews metrics; ``UnrepeatedDistributedSampler`` does not (ranks may get one batch more or less).
        Loaders asked for outside a running trainer (e.g. scoring on one device after DDP fit) get no sampler."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1 or trainer.state.status != TrainerStatus.RUNNING:
            return None
        return UnrepeatedDistributedSampler(self.datasets[split], num_replicas=trainer.world_size,
                                            rank=trainer.global_rank, shuffle=False)

    def _shuffle_sampler(self, split: str) -> DistributedSampler:
        """The training order of a local decoded pack, read a batch at a time (one gather per batch,
        :meth:`PackedSplit.__getitems__`): a seeded ``DistributedSampler``, the one Lightning injects for a
        map-style dataset under DDP, made here so that it also shuffles on one device. Each rank gets its
        share; the order depends on the seed (``PL_GLOBAL_SEED`` from the run's ``seed``, else ``split_seed``)
        and the epoch (Lightning calls ``set_epoch``), not on the global random state."""
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = int(os.environ.get("PL_GLOBAL_SEED", self.selection.split_seed))
        return DistributedSampler(self.datasets[split], num_replicas=world, rank=rank, shuffle=True, seed=seed)

    def preprocess_of(self, split: str) -> Preprocess:
        """The preprocessing of ``split``: the training one (random crop, augmentation) for train, else the plain one."""
        return self.train_preprocess if split == "train" else self.preprocess

    def _decodes_on_device(self, split: str) -> bool:
        """Whether ``split`` is read as JPEG bytes for :func:`~experiments.data.device_decode.decode_on_device`:
        with ``data.decode=device``, for a trainer on a CUDA device, when the split is not cached and its
        preprocessing has no PIL transform. Otherwise the workers decode (a warning says why, once)."""
        if self.decode != "device" or isinstance(self.datasets[split], PackedSplit):
            return False
        trainer = getattr(self, "trainer", None)
        prep = self.preprocess_of(split)
        reason = None
        if trainer is None or trainer.strategy.root_device.type != "cuda":
            reason = "the model is not on a CUDA device"
        elif prep.equalizer is not None or prep.augment is not None:
            reason = "an equalizer or augmentation runs on PIL images"
        if reason is not None and reason not in self._decode_warnings:
            self._decode_warnings.add(reason)
            log.warning("data.decode=device: %s; the loader workers decode on the CPU instead", reason)
        return reason is None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        workers = self.num_workers
        packed = isinstance(self.datasets[split], PackedSplit)
        if packed and not self.datasets[split].batched:  # a remote or encoded pack: LitData streams it
            return self._streaming_loader(split, shuffle)
        if shuffle:  # a local decoded pack: its own seeded order; files: the loader's RandomSampler
            sampler = self._shuffle_sampler(split) if packed else None
        else:
            sampler = self._eval_sampler(split)
        dataset, collate = self.datasets[split], collate_skipping
        if self._decodes_on_device(split):
            prep = self.preprocess_of(split)
            dataset = EncodedImageDataset(dataset.samples, prep, self.generator_names)
            collate = functools.partial(collate_encoded, preprocess=prep)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self._pin(),
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            collate_fn=collate,
            drop_last=False,
            multiprocessing_context=self._worker_context(),
        )

    def _streaming_loader(self, split: str, shuffle: bool) -> DataLoader:
        """LitData's ``StreamingDataLoader`` over a packed split: LitData shuffles (per epoch, seeded by
        ``split_seed``), shards the records by rank and worker, and resumes from the loader's ``state_dict``
        (which Lightning saves in its checkpoints). Val and test keep every record (``drop_last=False``), each
        on one rank. A local decoded pack is read by a plain ``DataLoader`` instead (see :meth:`_loader`): it
        reads whole batches (:meth:`PackedSplit.__getitems__`), shuffled by :meth:`_shuffle_sampler`, ordered
        with each image once on one rank (:meth:`_eval_sampler`)."""
        from litdata import StreamingDataLoader

        workers = self.num_workers
        packed = self.datasets[split]
        dataset = packed.streaming(shuffle=shuffle, drop_last=None if shuffle else False,
                                   seed=self.selection.split_seed)
        return StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self._pin(),
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            collate_fn=packed.collate(),
            multiprocessing_context=self._worker_context(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
