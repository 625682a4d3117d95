"""Concept reliance of a tenant head: which backbone concepts its outputs depend on.

The owner's view of what a tenant built ("this head relies on: sentiment 0.71, truth 0.02 ...").
For each bundled concept, a linear probe, the difference-of-means direction and a LEACE eraser are
fitted on the head's input hook (pooled activations of the concept's bundled datasets, read from
the ActivationStore). Two readings per concept:

1. geometry (linear and mlp heads): the |cosine| between the head's input direction and the
   concept's probe direction, both read as weights on standardised activations (each dimension
   scaled by its standard deviation over the concept rows, dead dimensions dropped: in raw
   coordinates a dimension with almost no variance, such as MiniLM's last-layer dimension 319,
   gets a huge probe weight and swamps every cosine). Linear heads: the folded weight rows (the
   logit difference for two classes). MLP heads: the mean input gradient of each logit over the
   texts (the head's local linearisation; for a linear head it equals the folded rows exactly).
2. behaviour (every head): the concept is erased from the head's input (the pooled vector, or
   every token entering a blocks head's copied blocks) and the head's outputs on the tenant's
   texts are compared with its clean outputs.

A random control sits next to the scores: the same estimator fitted on the same concept rows with
seeded shuffled labels, so it erases a random direction drawn from the activations' own
covariance (a uniform random direction in d_model dimensions carries almost no variance and would
make too easy a baseline).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from concept_erasure import LeaceEraser
from tqdm.auto import tqdm

from audit.errors import AuditError
from audit.tenants.heads import Head, PooledHead
from probes.backbone import Backbone, RaggedTokens
from probes.datasets import CONCEPT_LABELS, CONCEPTS, load_concept, validate_texts
from probes.errors import FingerprintMismatchError, InvalidInputError
from probes.estimators import LogisticProbe, MassMeanProbe
from probes.hooks import check_hook_names
from probes.metrics import auroc
from probes.pooling import TOKENS, check_pooling
from probes.robustness.erasure import as_float32, fit_eraser
from probes.robustness.intervene import Edit, project_out
from probes.store import ActivationStore, ShardKey, texts_hash

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_CONCEPTS = ("sentiment", "truth", "toxicity")
METHODS = ("leace", "mean_difference")
DEFAULT_MAX_SAMPLES = 300  # per bundled dataset of a concept
DEFAULT_MAX_TEXTS = 300  # of the tenant's texts
DEFAULT_N_CONTROLS = 3
CONTROL = "random control"
SCORE_DEFINITION = (
    "the share of the variance of the head's output over the audited texts that erasing the "
    "concept from its input moves: sum over outputs of Var(change) / Var(clean output), "
    "clipped to [0, 1]; outputs are centred logits (classification) or the value (regression). "
    "0: erasure leaves the output's variation untouched; 1: the change is as large as all of "
    "the variation the head had"
)


class RelianceError(AuditError, InvalidInputError):
    """A reliance audit that cannot run as asked; the message names the value and the fix."""


# ----------------------------------------------------------------------- concept directions
@dataclass(frozen=True, eq=False)
class ConceptDirection:
    """A concept's directions and eraser at one hook, fitted on its bundled datasets."""

    concept: str
    datasets: tuple[str, ...]
    n_samples: int
    direction: np.ndarray  # [d_model] logistic-probe weights on raw activations
    mean_difference: np.ndarray  # [d_model] unit difference of class means (raw activations)
    mean: np.ndarray  # [d_model] mean of the concept's rows: mean_difference erasure keeps it
    eraser: LeaceEraser  # float32, fitted on every row of the concept
    probe_auroc: float  # the logistic probe's AUROC on a held-out 30 % of the rows


@dataclass(frozen=True, eq=False)
class ControlDirection:
    """A random direction: the estimators fitted on the concept rows with shuffled labels."""

    seed: int
    mean_difference: np.ndarray
    mean: np.ndarray
    eraser: LeaceEraser


@dataclass(frozen=True, eq=False)
class ConceptDirections:
    """Every asked concept's directions at one (hook, pooling), and the random controls."""

    fingerprint: str
    hook_name: str
    pooling: str
    concepts: dict[str, ConceptDirection]
    controls: tuple[ControlDirection, ...]
    scale: np.ndarray  # [d_model] std of every concept row; 0 on dimensions with no variance


# A dimension whose std is below this fraction of the median one carries no signal (MiniLM's
# last layer has some with std ~1e-9, where a probe's raw weight explodes).
_DEAD_DIMENSION = 1e-4
_CACHE: dict[tuple[Any, ...], ConceptDirections] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached set of concept directions (tests, or after a store prune)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _check_concepts(concepts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(concepts, str):
        concepts = [c for c in concepts.split(",") if c.strip()]
    names = tuple(dict.fromkeys(str(c).strip().lower() for c in concepts))
    unknown = [c for c in names if c not in CONCEPTS]
    if not names or unknown:
        raise RelianceError(
            f"Unknown concept(s) {unknown or list(concepts)}. Expected one or more of: "
            f"{', '.join(CONCEPTS)}."
        )
    return names


def concept_directions(
    backbone: Backbone,
    store: ActivationStore,
    hook: str,
    pooling: str,
    concepts: Sequence[str] = DEFAULT_CONCEPTS,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
    n_controls: int = DEFAULT_N_CONTROLS,
    progress: bool = False,
) -> ConceptDirections:
    """Return each concept's probe direction, mean difference and LEACE eraser at ``hook``.

    Every bundled dataset of a concept gives a stratified, seeded subsample of ``max_samples``
    rows, read through the store (a second call on another process runs no forward). The result
    is cached in memory per (fingerprint, max_length, hook, pooling, concepts, max_samples,
    seed, n_controls).
    """
    names = _check_concepts(concepts)
    check_hook_names([hook], backbone.hook_names)
    pooling = check_pooling(pooling)
    if pooling == TOKENS:
        raise RelianceError("Concept directions are fitted on pooled activations, not 'tokens'.")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 20:
        raise RelianceError(f"max_samples must be an int >= 20. Got {max_samples!r} instead.")
    if isinstance(n_controls, bool) or not isinstance(n_controls, int) or n_controls < 1:
        raise RelianceError(f"n_controls must be a positive int. Got {n_controls!r} instead.")
    key = (
        backbone.fingerprint,
        backbone.max_length,
        hook,
        pooling,
        names,
        max_samples,
        seed,
        n_controls,
    )
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    logger.info("fitting concept directions %s at %s (%s pooling)", names, hook, pooling)
    fitted: dict[str, ConceptDirection] = {}
    features: list[np.ndarray] = []
    for concept in names:
        x, y, datasets = _concept_rows(
            backbone, store, hook, pooling, concept, max_samples, seed, progress
        )
        fitted[concept] = _fit_concept(concept, datasets, x, y, seed)
        features.append(x)
    everything = np.concatenate(features)
    controls = tuple(_fit_control(everything, seed + 1 + i) for i in range(n_controls))
    scale = everything.std(0)
    scale[scale < _DEAD_DIMENSION * float(np.median(scale))] = 0.0
    result = ConceptDirections(backbone.fingerprint, hook, pooling, fitted, controls, scale)
    with _CACHE_LOCK:
        _CACHE[key] = result
    return result


def _concept_rows(
    backbone: Backbone,
    store: ActivationStore,
    hook: str,
    pooling: str,
    concept: str,
    max_samples: int,
    seed: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Return the pooled features, 0/1 labels (index 1 = the concept's positive label), names."""
    order = CONCEPT_LABELS[concept]
    xs, ys = [], []
    datasets = load_concept(concept, max_samples=max_samples, seed=seed)
    for dataset in datasets:
        stored = store.get(
            backbone,
            list(dataset.texts),
            [hook],
            (pooling,),
            progress=progress,
            dataset_name=dataset.name,
        )
        xs.append(np.asarray(stored.pooled[(hook, pooling)], dtype=np.float64))
        ys.append(np.asarray([order.index(dataset.label_names[i]) for i in dataset.labels]))
    return np.concatenate(xs), np.concatenate(ys), tuple(d.name for d in datasets)


def _fit_concept(
    concept: str, datasets: tuple[str, ...], x: np.ndarray, y: np.ndarray, seed: int
) -> ConceptDirection:
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    train, test = train_test_split(rows, test_size=0.3, random_state=seed, stratify=y)
    probe = LogisticProbe(random_state=seed).fit(x[train], y[train])
    held_out = auroc(probe.decision_function(x[test]), y[test])
    return ConceptDirection(
        concept=concept,
        datasets=datasets,
        n_samples=len(y),
        direction=np.asarray(probe.coef_[0], dtype=np.float64),
        mean_difference=MassMeanProbe().fit(x, y).direction_,
        mean=x.mean(0),
        eraser=as_float32(fit_eraser(x, y)),
        probe_auroc=float(held_out),
    )


def _fit_control(x: np.ndarray, seed: int) -> ControlDirection:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(len(x)) % 2)
    return ControlDirection(
        seed=seed,
        mean_difference=MassMeanProbe().fit(x, y).direction_,
        mean=x.mean(0),
        eraser=as_float32(fit_eraser(x, y)),
    )


# ------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class RelianceScore:
    """One concept's (or the random control's) effect on a head.

    ``mean_abs_change``: classification, the mean total-variation distance between the class
    probabilities before and after erasure (for two classes: the mean |change| of either class's
    probability); regression, the mean |change| of the output. ``fraction_flipped``: the share of
    texts whose label changed (None for regression). The cosines are None for blocks heads.
    """

    name: str
    score: float
    mean_abs_change: float
    fraction_flipped: float | None
    weight_cosine: float | None  # |cos| of the head's input direction with the probe direction
    mean_difference_cosine: float | None  # ... with the difference-of-means direction
    probe_auroc: float | None = None  # held-out AUROC of the concept's probe (None: control)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": self.score,
            "mean_abs_change": self.mean_abs_change,
            "fraction_flipped": self.fraction_flipped,
            "weight_cosine": self.weight_cosine,
            "mean_difference_cosine": self.mean_difference_cosine,
            "probe_auroc": self.probe_auroc,
        }


@dataclass(frozen=True)
class RelianceReport:
    """What a head relies on: a score in [0, 1] per concept, next to a random-direction control.

    ``score`` (see ``SCORE_DEFINITION``): the share of the variance of the head's output over
    the audited texts that erasing the concept moves, ``sum_k Var(z'_k - z_k) / sum_k Var(z_k)``
    clipped to [0, 1], where ``z`` are the head's centred logits (classification: logits minus
    their mean over classes, so softmax-invariant shifts do not count) or its value (regression)
    and ``z'`` the same after erasure. 0: the erasure leaves the output's variation untouched;
    1: it moves the output as much as all of the variation the head had (a head reading nothing
    but the concept becomes constant). A uniform shift of every text's output (which can flip
    decisions without using the concept's variation) does not count: ``mean_abs_change`` and
    ``fraction_flipped`` show it. ``control`` averages ``n_controls`` random directions erased the
    same way.
    """

    head_id: str
    tenant_id: str
    kind: str
    task: str
    input_hook: str
    pooling: str  # the pooling the directions were fitted on
    method: str
    n_texts: int
    backbone_fingerprint: str
    concepts: tuple[RelianceScore, ...]
    control: RelianceScore
    n_controls: int
    direction_source: str | None  # how the head's input direction was read (None: blocks)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def scores(self) -> dict[str, float]:
        """Return the reliance score of each concept, by name."""
        return {c.name: c.score for c in self.concepts}

    def summary_line(self) -> str:
        """Return "relies on: sentiment 0.71, truth 0.02, ... (random control 0.01)"."""
        parts = ", ".join(f"{c.name} {c.score:.2f}" for c in self.concepts)
        return f"relies on: {parts} ({CONTROL} {self.control.score:.2f})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "head_id": self.head_id,
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "task": self.task,
            "input_hook": self.input_hook,
            "pooling": self.pooling,
            "method": self.method,
            "n_texts": self.n_texts,
            "backbone_fingerprint": self.backbone_fingerprint,
            "summary": self.summary_line(),
            "score_definition": SCORE_DEFINITION,
            "scores": self.scores,
            "concepts": [c.as_dict() for c in self.concepts],
            "control": self.control.as_dict(),
            "n_controls": self.n_controls,
            "direction_source": self.direction_source,
            "notes": list(self.notes),
        }


# -------------------------------------------------------------------------------- the audit
def audit_head(
    backbone: Backbone,
    store: ActivationStore,
    head: Head,
    texts: Sequence[str],
    *,
    concepts: Sequence[str] = DEFAULT_CONCEPTS,
    method: str = "leace",
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    n_controls: int = DEFAULT_N_CONTROLS,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> RelianceReport:
    """Return the head's reliance on each concept, measured on ``texts`` (subsampled).

    ``method``: ``"leace"`` erases with each concept's LEACE eraser (the least-squares edit
    after which no linear classifier decodes the concept on its data); ``"mean_difference"``
    projects out the unit difference-of-means direction around the concept data's mean. Pooled
    heads are edited on their pooled input vector; blocks heads on every token entering the
    copied blocks (directions fitted on mean-pooled activations of that hook: an affine edit
    commutes with the mean over tokens).
    """
    if method not in METHODS:
        raise RelianceError(f"Unknown method {method!r}. Expected one of: {', '.join(METHODS)}.")
    meta = head.meta
    if meta.task == "lm":
        raise RelianceError(
            f"Head {meta.head_id} is a language-model head; the reliance audit reads class "
            "probabilities or values (classification and regression heads)."
        )
    if meta.backbone_fingerprint != backbone.fingerprint:
        raise FingerprintMismatchError(
            f"Head {meta.head_id} was trained on backbone {meta.backbone_name} "
            f"({meta.backbone_fingerprint[:12]}), not on {backbone.name} "
            f"({backbone.fingerprint[:12]}). Audit it on its own backbone."
        )
    if isinstance(max_texts, bool) or not isinstance(max_texts, int) or max_texts < 2:
        raise RelianceError(f"max_texts must be an int >= 2. Got {max_texts!r} instead.")
    texts = validate_texts(texts)
    if len(texts) < 2:
        raise RelianceError(f"Give at least 2 texts to audit the head on; got {len(texts)}.")
    rows = np.arange(len(texts))
    if len(texts) > max_texts:
        rows = np.sort(np.random.default_rng(seed).choice(len(texts), max_texts, replace=False))
    pooling = "mean" if head.reads_tokens else meta.pooling
    found = concept_directions(
        backbone,
        store,
        head.input_hook,
        pooling,
        concepts,
        max_samples=max_samples,
        seed=seed,
        n_controls=n_controls,
        progress=progress,
    )
    edits: dict[str, Edit] = {}
    for name, concept in found.concepts.items():
        edits[name] = _edit(method, concept.eraser, concept.mean_difference, concept.mean)
    for i, control in enumerate(found.controls):
        edits[f"control-{i}"] = _edit(method, control.eraser, control.mean_difference, control.mean)
    inputs = _head_inputs(backbone, store, head, texts, rows, progress)
    clean, edited = _run_edits(head, inputs, edits, batch_size, progress)
    rows_dir, source = _input_directions(head, inputs)

    def score(name: str, key: str, probe: np.ndarray | None, md: np.ndarray) -> RelianceScore:
        effect = _effect(meta.task, clean, edited[key])
        return RelianceScore(
            name=name,
            score=effect[0],
            mean_abs_change=effect[1],
            fraction_flipped=effect[2],
            weight_cosine=(
                None if rows_dir is None or probe is None else _cos(rows_dir, probe, found.scale)
            ),
            mean_difference_cosine=None if rows_dir is None else _cos(rows_dir, md, found.scale),
            probe_auroc=found.concepts[name].probe_auroc if name in found.concepts else None,
        )

    per_concept = tuple(
        score(name, name, c.direction, c.mean_difference) for name, c in found.concepts.items()
    )
    per_control = [
        score(CONTROL, f"control-{i}", None, c.mean_difference)
        for i, c in enumerate(found.controls)
    ]
    notes = []
    if head.reads_tokens and meta.pooling != "mean":
        notes.append(
            f"the head pools with {meta.pooling!r} after its blocks; the directions were fitted "
            "on mean-pooled activations of its input hook and erased from every token"
        )
    return RelianceReport(
        head_id=meta.head_id,
        tenant_id=meta.tenant_id,
        kind=meta.kind,
        task=meta.task,
        input_hook=head.input_hook,
        pooling=pooling,
        method=method,
        n_texts=len(rows),
        backbone_fingerprint=backbone.fingerprint,
        concepts=per_concept,
        control=_mean_score(per_control),
        n_controls=len(per_control),
        direction_source=source,
        notes=tuple(notes),
    )


def _edit(method: str, eraser: LeaceEraser, direction: np.ndarray, mean: np.ndarray) -> Edit:
    if method == "leace":
        return eraser
    remove = project_out(direction)
    centre = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    # Around the concept data's mean: the component along the direction becomes the data's
    # average one, not zero (zero can lie far outside the activations the head has seen).
    return lambda acts: centre + remove(acts - centre)


@dataclass
class _Inputs:
    """The head's inputs on the audited texts: pooled rows, or ragged per-token rows."""

    pooled: torch.Tensor | None = None  # [n, d_model]
    tokens: RaggedTokens | None = None


def _head_inputs(
    backbone: Backbone,
    store: ActivationStore,
    head: Head,
    texts: list[str],
    rows: np.ndarray,
    progress: bool,
) -> _Inputs:
    """Return the head's inputs for ``texts[rows]``, from the whole list's shard when stored.

    Training stored the whole corpus at the head's input: reading it costs no forward. Texts not
    stored are computed (and stored) for the subsample only.
    """
    hook = head.input_hook
    pooling = TOKENS if head.reads_tokens else head.meta.pooling
    key = ShardKey(backbone.fingerprint, texts_hash(texts), hook, pooling, backbone.max_length)
    stored = store.load(key, len(texts))
    if stored is None:
        chosen = [texts[i] for i in rows]
        got = store.get(backbone, chosen, [hook], (pooling,), progress=progress)
        stored = got.tokens[hook] if pooling == TOKENS else got.pooled[(hook, pooling)]
        rows = np.arange(len(chosen))
    if isinstance(stored, RaggedTokens):
        offsets = stored.offsets
        parts = [stored.text(int(i)) for i in rows]
        lengths = np.asarray([len(p) for p in parts], dtype=np.int64)
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(offsets.dtype)
        return _Inputs(tokens=RaggedTokens(np.concatenate(parts), new_offsets))
    return _Inputs(pooled=torch.from_numpy(np.asarray(stored[rows], dtype=np.float32)))


def _run_edits(
    head: Head,
    inputs: _Inputs,
    edits: dict[str, Edit],
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return the head's clean logits and its logits after each edit, [n, n_outputs] each."""
    if inputs.pooled is not None:
        x = inputs.pooled
        with torch.inference_mode():
            return head.logits(x), {name: head.logits(edit(x)) for name, edit in edits.items()}
    tokens = inputs.tokens
    assert tokens is not None
    n = len(tokens)
    order = np.argsort(-np.diff(tokens.offsets), kind="stable")  # by length: little padding
    clean = torch.zeros(n, head.meta.n_outputs)
    edited = {name: torch.zeros(n, head.meta.n_outputs) for name in edits}
    bar = tqdm(
        total=n * (len(edits) + 1),
        desc=f"erasing from {head.input_hook}",
        unit="text",
        disable=not progress,
        leave=False,
    )
    with bar, torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            acts, mask = tokens.padded(batch.tolist())
            clean[batch] = head.logits(acts, mask).float()
            for name, edit in edits.items():
                edited[name][batch] = head.logits(edit(acts), mask).float()
            bar.update(len(batch) * (len(edits) + 1))
    return clean, edited


def _input_directions(head: Head, inputs: _Inputs) -> tuple[np.ndarray | None, str | None]:
    """Return the head's input direction rows [r, d_model] in raw activation space, and how.

    Two outputs give one row (the logit difference); more give one row per centred logit; a
    regression head its single output. Blocks heads have none (their input is per-token).
    """
    module = head.module
    if not isinstance(module, PooledHead) or inputs.pooled is None:
        return None, None
    if head.kind == "linear":
        with torch.no_grad():
            weight = module.folded_linear()[0].detach().double()
        source = "folded linear weights"
    else:
        x = inputs.pooled.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = module(x)
            grads = [
                torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True)[0].mean(0)
                for k in range(logits.shape[1])
            ]
        weight = torch.stack(grads).detach().double()
        source = "mean input gradient of each logit over the audited texts"
    if weight.shape[0] == 2:
        rows = (weight[1] - weight[0]).unsqueeze(0)
    elif weight.shape[0] > 2:
        rows = weight - weight.mean(0, keepdim=True)
    else:
        rows = weight
    return rows.numpy(), source


def _cos(rows: np.ndarray, readout: np.ndarray, scale: np.ndarray) -> float:
    """Return the largest |cosine| between a row and ``readout``, on standardised activations.

    Both are weights on raw activations; times the per-dimension std they become weights on
    standardised ones (dead dimensions, whose scale is 0, drop out).
    """
    a = rows * scale
    b = np.asarray(readout, dtype=np.float64) * scale
    norms = np.linalg.norm(a, axis=1) * max(float(np.linalg.norm(b)), 1e-12)
    cosines = np.abs(a @ b) / np.maximum(norms, 1e-12)
    return round(float(cosines.max()), 6)


def _centred(task: str, logits: torch.Tensor) -> np.ndarray:
    out = logits.double().numpy()
    return out if task == "regression" else out - out.mean(1, keepdims=True)


def _effect(
    task: str, clean: torch.Tensor, edited: torch.Tensor
) -> tuple[float, float, float | None]:
    """Return (reliance score, mean absolute change, fraction flipped) of one edit."""
    before, after = _centred(task, clean), _centred(task, edited)
    variance = float(before.var(0).sum())
    moved = float((after - before).var(0).sum())
    score = (1.0 if moved > 1e-12 else 0.0) if variance <= 1e-12 else moved / variance
    score = round(min(score, 1.0), 6)
    if task == "regression":
        return score, round(float(np.mean(np.abs(after - before))), 6), None
    p_clean = torch.softmax(clean.double(), -1).numpy()
    p_edited = torch.softmax(edited.double(), -1).numpy()
    change = float(np.mean(0.5 * np.abs(p_edited - p_clean).sum(1)))
    flipped = float(np.mean(p_clean.argmax(1) != p_edited.argmax(1)))
    return score, round(change, 6), round(flipped, 6)


def _mean_score(scores: list[RelianceScore]) -> RelianceScore:
    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return round(float(np.mean(kept)), 6) if kept else None

    score = mean([s.score for s in scores])
    change = mean([s.mean_abs_change for s in scores])
    assert score is not None and change is not None
    return RelianceScore(
        name=CONTROL,
        score=score,
        mean_abs_change=change,
        fraction_flipped=mean([s.fraction_flipped for s in scores]),
        weight_cosine=None,
        mean_difference_cosine=mean([s.mean_difference_cosine for s in scores]),
    )
