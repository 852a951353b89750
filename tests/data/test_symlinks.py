"""The scan's symlink rule: links out of ``data.root`` are skipped, counted and listed (unless
``data.follow_symlinks=true``); links inside it are followed, each folder once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from experiments.data.audit import scan_dataset
from experiments.data.walk import BROKEN_LINK, LINK_LEAVES_ROOT, ImageWalk
from experiments.training.builders import build_datamodule
from tests.conftest import compose_config, make_genimage_tree

DATA = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.num_workers=0"]


def datamodule(root: Path, tmp_path: Path, *extra: str):
    dm = build_datamodule(compose_config(DATA + [f"data.root={root}", *extra], tmp_path))
    dm.setup()
    return dm


def paths_of(dm) -> set[str]:
    return {os.path.basename(s.path) for samples in dm.splits.values() for s in samples}


@pytest.fixture
def tree_with_links_out(tmp_path: Path) -> tuple[Path, Path]:
    root = make_genimage_tree(tmp_path / "data")
    elsewhere = make_genimage_tree(tmp_path / "elsewhere", generators=("other",))
    ai = root / "gen_a" / "train" / "ai"
    (ai / "passwd.png").symlink_to("/etc/passwd")
    (ai / "outside.png").symlink_to(elsewhere / "other" / "train" / "ai" / "ai_000.png")
    (ai / "gone.png").symlink_to(tmp_path / "does-not-exist.png")
    (ai / "linked_folder").symlink_to(elsewhere / "other" / "train" / "nature", target_is_directory=True)
    return root, elsewhere


def test_links_out_of_the_root_are_skipped_and_listed(tree_with_links_out, tmp_path, caplog):
    root, _ = tree_with_links_out
    with caplog.at_level("WARNING"):
        dm = datamodule(root, tmp_path)
    names = paths_of(dm)
    assert not {"passwd.png", "outside.png", "gone.png"} & names
    assert not any(n.startswith("nature_") and "linked_folder" in n for n in names)
    assert len([s for v in dm.splits.values() for s in v]) == 2 * 2 * 2 * 6  # the tree's own files only
    reasons = sorted((Path(s.path).name, s.reason) for s in dm.skipped_links)
    assert reasons == [("gone.png", BROKEN_LINK), ("linked_folder", LINK_LEAVES_ROOT),
                       ("outside.png", LINK_LEAVES_ROOT), ("passwd.png", LINK_LEAVES_ROOT)]
    assert "4 symlink(s) not followed" in caplog.text and "data.follow_symlinks=true" in caplog.text

    report = scan_dataset(dm, progress=False)
    assert report.n_images == 48 and not report.unreadable  # /etc/passwd was never opened
    text = report.format_table()
    assert "Symlinks not followed (not read): 4" in text and "link leaves the dataset: 3" in text
    assert f"{root / 'gen_a' / 'train' / 'ai' / 'passwd.png'} -> /etc/passwd" in text
    saved = report.to_dict()
    assert saved["skipped_links_count"] == 4
    assert {"path": str(root / "gen_a/train/ai/outside.png"), "reason": LINK_LEAVES_ROOT,
            "target": os.path.realpath(root / "gen_a/train/ai/outside.png")} in saved["skipped_links"]
    assert report.summary_metrics()["data/links_skipped"] == 4.0
    json.dumps(saved)


def test_follow_symlinks_takes_links_out_of_the_root(tree_with_links_out, tmp_path):
    root, _ = tree_with_links_out
    (root / "gen_a" / "train" / "ai" / "passwd.png").unlink()
    dm = datamodule(root, tmp_path, "data.follow_symlinks=true")
    names = paths_of(dm)
    assert "outside.png" in names
    linked = [s for v in dm.splits.values() for s in v if "linked_folder" in s.path]
    assert len(linked) == 6 and {s.label for s in linked} == {1}  # under ai/: the class folder gives the label
    assert [s.reason for s in dm.skipped_links] == [BROKEN_LINK]


def test_links_inside_the_root_are_followed_once(tmp_path):
    root = make_genimage_tree(tmp_path / "data")
    ai = root / "gen_a" / "train" / "ai"
    (ai / "from_b.png").symlink_to(root / "gen_b" / "train" / "ai" / "ai_000.png")
    (ai / "b_folder").symlink_to(root / "gen_b" / "val" / "ai", target_is_directory=True)
    (ai / "again").symlink_to(root / "gen_b" / "val" / "ai", target_is_directory=True)  # the same folder twice
    (ai / "loop").symlink_to(ai, target_is_directory=True)  # a cycle
    dm = datamodule(root, tmp_path)
    train_ai = [s for s in dm.splits["train"] + dm.splits["val"] if s.generator == "gen_a" and s.label == 1]
    names = sorted(Path(s.path).relative_to(ai).as_posix() for s in train_ai)
    assert "from_b.png" in names
    via_links = [n for n in names if n.startswith(("b_folder/", "again/"))]
    assert len(via_links) == 6  # the linked folder read once, by the first link
    assert not any(n.startswith("loop/") for n in names)
    assert dm.skipped_links == []


def test_the_walk_goes_depth_first_by_name_and_admits_explicit_files(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    for name in ("b.png", "a/x.png", "a.png", "c.txt"):
        (root / name).write_bytes(b"")
    walk = ImageWalk(root)
    assert walk.images(root) == [root / "a.png", root / "b.png", root / "a" / "x.png"]  # a folder's files first
    assert ImageWalk(root).images(root, recursive=False) == [root / "a.png", root / "b.png"]
    assert walk.ignored == 1
    outside = tmp_path / "o.png"
    outside.write_bytes(b"")
    (root / "l.png").symlink_to(outside)
    assert walk.admits(outside)  # a file named explicitly (a manifest row) outside the root
    assert not walk.admits(root / "l.png") and walk.skipped[-1].reason == LINK_LEAVES_ROOT
    assert ImageWalk(root, follow_symlinks=True).admits(root / "l.png")
    shutil.rmtree(root)
