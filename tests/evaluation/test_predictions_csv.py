"""``predictions_<split>.csv`` carries what pairs an image on any mount: its path relative to ``data.root`` and
the content hash the data check computes."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from experiments.data.audit.inspection import content_hash
from experiments.data.layouts import Sample
from experiments.evaluation.comparison import pairing_keys, read_prediction_file
from experiments.evaluation.predictions import PREDICTION_COLUMNS, Predictions, write_predictions_csv


def test_predictions_carry_relative_path_and_content_hash(tmp_path):
    root = tmp_path / "mount" / "genimage"
    (root / "gen_a").mkdir(parents=True)
    samples = []
    for i, data in enumerate((b"first image", b"second image", b"first image")):
        path = root / "gen_a" / f"{i}.png"
        path.write_bytes(data)
        samples.append(Sample(str(path), i % 2, "gen_a", f"gen_a/{i}.png"))
    pred = Predictions(np.array([0.2, 0.7, 0.3]), np.array([0, 1, 0]), np.array([0, 0, 0]), np.array([2, 1, 0]),
                       ["gen_a"])
    out = write_predictions_csv(pred, samples, tmp_path / "predictions_test.csv",
                                hashes={samples[1].path: "from-the-data-check"})
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    assert [r["relpath"] for r in rows] == ["gen_a/2.png", "gen_a/1.png", "gen_a/0.png"]
    assert rows[0]["hash"] == content_hash(b"first image") == hashlib.sha256(b"first image").hexdigest()
    assert rows[1]["hash"] == "from-the-data-check" and rows[0]["hash"] == rows[2]["hash"]
    (keys,), kind = pairing_keys([read_prediction_file(out)])
    assert kind == "hash" and len(set(keys)) == 3


def test_prediction_index_outside_the_split_is_refused(tmp_path):
    pred = Predictions(np.array([0.5]), np.array([0]), np.array([0]), np.array([3]), ["g"])
    with pytest.raises(IndexError, match="outside the split's 1 samples"):
        write_predictions_csv(pred, [Sample("/x.png", 0, "g", "x.png")], tmp_path / "p.csv")
