"""Dataset parsing and splitting: NPZ and CSV layouts, pvc:// resolution, label checks and a
seeded split. Files are written to tmp_path; no network and no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fogline.workloads.trainer.datasets import (
    limit_training,
    load_dataset,
    resolve_local_path,
    split_dataset,
)
from fogline.workloads.trainer.errors import TrainerError

pytestmark = pytest.mark.unit


def test_builtin_digits_load_offline() -> None:
    digits = load_dataset("builtin:digits")
    assert digits.features.shape == (1797, 64)
    assert digits.features.dtype == np.float32
    assert digits.num_classes == 10
    assert digits.digest.startswith("sha256:")


@pytest.mark.parametrize(("x_key", "y_key"), [("x", "y"), ("features", "labels")])
def test_npz_with_either_key_pair(tmp_path: Path, x_key: str, y_key: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **{x_key: np.ones((6, 2, 2)), y_key: np.array([0, 1, 2, 0, 1, 2])})
    dataset = load_dataset(str(path))
    assert dataset.features.shape == (6, 4)  # images arrive as flat rows
    assert dataset.num_classes == 3 and dataset.format == "npz"


def test_csv_with_header_takes_the_label_from_the_last_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n0.5,1,0\n1.5,2,1\n2.5,3,1\n")
    dataset = load_dataset(str(path))
    assert dataset.features.tolist() == [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]
    assert dataset.labels.tolist() == [0, 1, 1]


def test_pvc_uri_resolves_under_the_pvc_root(tmp_path: Path) -> None:
    (tmp_path / "claim" / "sets").mkdir(parents=True)
    path = tmp_path / "claim" / "sets" / "d.csv"
    path.write_text("1,0\n2,1\n")
    assert resolve_local_path("pvc://claim/sets/d.csv", tmp_path) == path
    assert load_dataset("pvc://claim/sets/d.csv", pvc_root=tmp_path).num_classes == 2


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("pvc://claim", "DatasetNotFound"),
        ("pvc://claim/../../etc/passwd", "DatasetNotFound"),
        ("ftp://host/d.csv", "DatasetUnsupported"),
        ("s3://bucket/d.npz", "DatasetUnsupported"),
        ("builtin:mnist", "DatasetNotFound"),
    ],
)
def test_unusable_uris_are_refused(tmp_path: Path, uri: str, reason: str) -> None:
    with pytest.raises(TrainerError) as raised:
        load_dataset(uri, pvc_root=tmp_path)
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,0.5\n2,1\n", "class numbers"),
        ("1,-1\n2,1\n", "class numbers"),
        ("1,0\n", "at least 2 samples"),
        ("1,0\n2,0\n", "at least 2 classes"),
        ("1\n2\n", "features and a label"),
        ("nan,0\n1,1\n", "NaN"),
    ],
)
def test_bad_labels_and_values_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(TrainerError, match=message) as raised:
        load_dataset(str(path))
    assert raised.value.reason == "DatasetInvalid"


def test_digest_of_a_local_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("1,0\n2,1\n")
    good = load_dataset(str(path)).digest
    assert load_dataset(str(path), digest=good).digest == good
    with pytest.raises(TrainerError) as raised:
        load_dataset(str(path), digest="sha256:" + "0" * 64)
    assert raised.value.reason == "DatasetDigestMismatch"


def test_split_is_seeded_disjoint_and_complete() -> None:
    digits = load_dataset("builtin:digits")
    first = split_dataset(digits, 0.2, seed=5)
    again = split_dataset(digits, 0.2, seed=5)
    other = split_dataset(digits, 0.2, seed=6)
    assert len(first.validation_labels) == 359 and len(first.train_labels) == 1438
    np.testing.assert_array_equal(first.validation_features, again.validation_features)
    assert not np.array_equal(first.validation_features, other.validation_features)


def test_split_puts_every_class_on_both_sides_even_a_rare_one(tmp_path: Path) -> None:
    labels = np.array([0] * 100 + [1] * 97 + [2] * 3)
    features = np.arange(len(labels), dtype=np.float64).reshape(-1, 1)
    path = tmp_path / "rare.npz"
    np.savez(path, x=features, y=labels)
    dataset = load_dataset(str(path))
    for seed in range(20):
        split = split_dataset(dataset, 0.2, seed)
        assert set(split.train_labels.tolist()) == {0, 1, 2}
        assert set(split.validation_labels.tolist()) == {0, 1, 2}
        assert len(split.train_labels) + len(split.validation_labels) == 200


def test_class_with_one_sample_cannot_be_split(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("".join(f"{i},{i % 2}\n" for i in range(20)) + "5,2\n")
    with pytest.raises(TrainerError, match="class 2 has fewer than 2 samples") as raised:
        split_dataset(load_dataset(str(path)), 0.2, 0)
    assert raised.value.reason == "DatasetInvalid"


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("inf", "class numbers"),
        ("nan", "class numbers"),
        ("1e20", "too large"),
        ("1000000000", "too large"),
    ],
)
def test_non_finite_and_huge_labels_are_refused_before_any_allocation(
    tmp_path: Path, label: str, message: str
) -> None:
    path = tmp_path / "d.csv"
    path.write_text("".join(f"{i},{i % 2}\n" for i in range(199)) + f"1,{label}\n")
    with pytest.raises(TrainerError, match=message) as raised:
        load_dataset(str(path))
    assert raised.value.reason == "DatasetInvalid"


def test_corrupt_npz_is_dataset_invalid(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(TrainerError, match="not a readable NPZ") as raised:
        load_dataset(str(path))
    assert raised.value.reason == "DatasetInvalid"


def test_a_train_fraction_keeps_a_stratified_seeded_share_and_the_same_held_out_rows() -> None:
    split = split_dataset(load_dataset("builtin:digits"), 0.2, seed=3)
    limited = limit_training(split, 0.05, seed=3)
    per_class = np.bincount(limited.train_labels, minlength=10)
    full = np.bincount(split.train_labels, minlength=10)
    assert per_class.tolist() == [max(1, round(n * 0.05)) for n in full.tolist()]
    assert np.array_equal(limited.validation_features, split.validation_features)
    assert np.array_equal(limited.validation_labels, split.validation_labels)
    # Every kept row is a training row of the split, none a held-out one.
    rows = {row.tobytes() for row in split.train_features}
    assert all(row.tobytes() in rows for row in limited.train_features)
    again = limit_training(split, 0.05, seed=3)
    assert np.array_equal(again.train_features, limited.train_features)
    other = limit_training(split, 0.05, seed=4)
    assert not np.array_equal(other.train_features, limited.train_features)
    assert limit_training(split, 1.0, seed=3) is split
