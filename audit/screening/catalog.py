"""Where fitted screen banks live, which one is the latest, and fitting the default bank.

Banks are saved under ``<AUDIT_HOME>/screens/<backbone fingerprint[:16]>/<version>/`` (safetensors +
JSON, ``save_bank``). A bank's folder name is its version id, so refitting identical screens is a
no-op; the latest bank of a backbone is the one created last (``created_at`` in its metadata).
``audit screen fit`` and ``audit serve`` (on first start) fit the default bank from the bundled
requests' train and calibration splits; the evaluation split is never read here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from audit.screening.augment import augment_framings
from audit.screening.robustness import bury, make_filler
from audit.screening.screener import DEFAULT_SPAN_TOKENS, Screener, split_segments
from audit.screening.screens import ScreenBank, ScreenSpec, SegmentRule, SpanRule, fit_screens
from audit.screening.storage import META_FILE, load_bank, save_bank
from audit.screening.thresholds import Threshold, measure_threshold, threshold_for_fpr
from probes.errors import InvalidInputError
from probes.home import audit_home
from probes.requests import RequestSet, load_requests
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

DEFAULT_FRAMED_FRACTION = 0.3


def default_specs(n_layers: int) -> tuple[ScreenSpec, ...]:
    """Return the default screens for a backbone of ``n_layers`` blocks.

    Mean- and max-pooled logistic screens on the block about 70% of the way up, and an ensemble
    of four blocks spread over the upper 60% (MiniLM's six blocks: layer 4, and layers 2 to 5).
    """
    if n_layers < 1:
        raise InvalidInputError(f"n_layers must be positive. Got {n_layers} instead.")
    top = n_layers - 1
    mid = int(round(0.7 * top))
    spread = sorted({int(round(x)) for x in np.linspace(0.4 * top, top, 4)})
    tag = "_".join(str(x) for x in (spread[0], spread[-1]))
    return (
        ScreenSpec(f"logistic_mean_l{mid}", "logistic_mean", (mid,), "mean"),
        ScreenSpec(f"logistic_max_l{mid}", "logistic_max", (mid,), "max"),
        ScreenSpec(f"ensemble_l{tag}", "ensemble", tuple(spread), "mean"),
    )


def screens_root() -> Path:
    """Return the folder holding every backbone's fitted banks."""
    return audit_home() / "screens"


def backbone_dir(fingerprint: str) -> Path:
    """Return the folder of one backbone's banks."""
    return screens_root() / fingerprint[:16]


@dataclass(frozen=True)
class BankEntry:
    """A saved bank as listed: where it is, its version, backbone, creation time and primary."""

    path: Path
    version: str
    backbone: str
    fingerprint: str
    created_at: str
    primary: str
    screens: tuple[str, ...]
    n_train: int
    n_calibration: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "version": self.version,
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at,
            "primary": self.primary,
            "screens": list(self.screens),
            "n_train": self.n_train,
            "n_calibration": self.n_calibration,
        }


def list_banks(fingerprint: str | None = None) -> list[BankEntry]:
    """Return saved banks (of one backbone, or all), newest first; unreadable folders skipped."""
    root = screens_root()
    if not root.is_dir():
        return []
    folders = [backbone_dir(fingerprint)] if fingerprint else sorted(root.iterdir())
    entries = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for bank_dir in folder.iterdir():
            meta_path = bank_dir / META_FILE
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                entries.append(
                    BankEntry(
                        path=bank_dir,
                        version=str(meta["version"]),
                        backbone=str(meta["backbone"]),
                        fingerprint=str(meta["fingerprint"]),
                        created_at=str(meta["created_at"]),
                        primary=str(meta["primary"]),
                        screens=tuple(str(s["name"]) for s in meta["screens"]),
                        n_train=int(meta["training"]["n_train"]),
                        n_calibration=int(meta["training"]["n_calibration"]),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("skipping unreadable screen bank folder %s", bank_dir)
    if fingerprint:
        entries = [e for e in entries if e.fingerprint == fingerprint]
    return sorted(entries, key=lambda e: e.created_at, reverse=True)


def save_to_catalog(bank: ScreenBank) -> Path:
    """Return the folder ``bank`` is saved in under its backbone's catalog folder."""
    return save_bank(bank, backbone_dir(bank.fingerprint) / bank.version)


def latest_bank(backbone: Any, version: str | None = None) -> ScreenBank | None:
    """Return the backbone's newest saved bank (or the one with ``version``); None if none.

    A bank that fails to load (tampered, stale) raises rather than falling back to an older one:
    serving must not silently change which screens decide.
    """
    entries = list_banks(backbone.fingerprint)
    if version is not None:
        entries = [e for e in entries if e.version == version or e.version.startswith(version)]
        if not entries:
            raise InvalidInputError(
                f"No screen bank {version!r} for backbone {backbone.name!r}; "
                "`audit screen list` shows the fitted ones."
            )
    if not entries:
        return None
    return load_bank(entries[0].path, backbone)


def default_training_data(
    sources: Sequence[str] | None = None,
    *,
    max_train: int | None = None,
    max_calibration: int | None = None,
    seed: int = 0,
    framed_fraction: float = DEFAULT_FRAMED_FRACTION,
) -> tuple[RequestSet, RequestSet]:
    """Return the bundled requests' train and calibration splits (optionally subsampled).

    ``max_train`` counts the bundled rows; ``framed_fraction`` of them (of each label) are then
    added again wrapped in a training framing (``augment_framings``; 0 turns it off). The
    calibration split is left as real traffic would look.
    """
    train = load_requests(sources, split="train", seed=seed)
    calibration = load_requests(sources, split="calibration", seed=seed)
    if max_train is not None and train.n_samples > max_train:
        train = train.subsample(max_train, seed=seed)
    if max_calibration is not None and calibration.n_samples > max_calibration:
        calibration = calibration.subsample(max_calibration, seed=seed)
    return augment_framings(train, framed_fraction, seed=seed), calibration


def _long_texts(
    calibration: RequestSet, n_long: int, chars: tuple[int, int], seed: int, what: str
) -> tuple[list[str], list[str]]:
    """Return long benign texts (random benign calibration requests joined) and half as many
    long harmful ones (a harmful calibration request buried in such a text)."""
    benign = [t for t, y in zip(calibration.texts, calibration.labels, strict=True) if y == 0]
    harmful = [t for t, y in zip(calibration.texts, calibration.labels, strict=True) if y == 1]
    if len(benign) < 10 or len(harmful) < 2:
        raise InvalidInputError(
            f"The {what} rule needs at least 10 benign and 2 harmful calibration requests."
        )
    rng = np.random.default_rng([seed, 4242])
    long_benign = [make_filler(benign, rng, *chars) for _ in range(n_long)]
    long_harmful = [
        bury(harmful[int(rng.integers(len(harmful)))], benign, rng, *chars)[0]
        for _ in range(max(1, n_long // 2))
    ]
    return long_benign, long_harmful


def _long_text_thresholds(
    bank: ScreenBank, benign: np.ndarray, harmful: np.ndarray
) -> tuple[Threshold, Threshold]:
    """Return (block, flag) thresholds for a long-text score: at most the bank's target FPRs of
    the long benign texts, never below the bank's own thresholds, flag never above block."""
    primary = bank.screen(bank.primary)
    info = bank.training

    def threshold(action: str, target: float, floor: float) -> Threshold:
        chosen = threshold_for_fpr(action, target, benign, harmful)
        if chosen.value < floor:
            chosen = measure_threshold(action, floor, target, benign, harmful)
        return chosen

    block = threshold("block", info.target_block_fpr, primary.block.value)
    flag = threshold("flag", info.target_flag_fpr, primary.flag.value)
    if flag.value > block.value:
        flag = measure_threshold("flag", block.value, info.target_flag_fpr, benign, harmful)
    return block, flag


def fit_span_rule(
    backbone: Any,
    bank: ScreenBank,
    calibration: RequestSet,
    *,
    span_tokens: int = DEFAULT_SPAN_TOKENS,
    n_long: int = 200,
    chars: tuple[int, int] = (1000, 6000),
    seed: int = 0,
    progress: bool = False,
) -> ScreenBank:
    """Return ``bank`` with the primary's long-text span rule set on calibration-made texts.

    ``n_long`` long benign texts are made by joining random benign calibration requests
    (``chars`` characters each), and half as many long harmful ones by burying a harmful
    calibration request in such a text. The span thresholds flag / block at most the bank's
    target FPRs of the long benign texts, and never sit below the bank's own thresholds, so texts
    no longer than the span (whose span score is their score) decide exactly as before.
    """
    primary = bank.screen(bank.primary)
    if primary.spec.pooling != "mean":
        raise InvalidInputError(
            f"The span rule reads a mean-pooled primary screen; {bank.primary!r} pools by "
            f"{primary.spec.pooling!r}."
        )
    long_benign, long_harmful = _long_texts(calibration, n_long, chars, seed, "span")
    screener = Screener(backbone, replace(bank, span=None), span_tokens=span_tokens)
    results = screener.screen(long_benign + long_harmful, progress=progress)
    spans = np.array([r.span_score for r in results], dtype=np.float64)
    block, flag = _long_text_thresholds(bank, spans[:n_long], spans[n_long:])
    rule = SpanRule(span_tokens, block, flag, len(long_benign), len(long_harmful))
    logger.info(
        "span rule (%d tokens): block %.4f (long benign FPR %.3f), flag %.4f",
        span_tokens,
        block.value,
        block.fpr.value,
        flag.value,
    )
    return replace(bank, span=rule)


def fit_segment_rule(
    backbone: Any,
    bank: ScreenBank,
    calibration: RequestSet,
    *,
    n_long: int = 300,
    chars: tuple[int, int] = (1000, 6000),
    seed: int = 0,
    progress: bool = False,
) -> ScreenBank:
    """Return ``bank`` with the primary's multi-paragraph segment rule set on calibration texts.

    The benign side is every multi-line benign calibration request (dialogues, multiple-choice
    questions: lines that read oddly on their own) and ``n_long`` long texts made as for
    ``fit_span_rule`` (requests joined by blank lines); the harmful side is half as many long
    texts with a harmful request buried among them. Thresholds as for the span rule, on each
    text's highest segment.
    """
    made_benign, long_harmful = _long_texts(calibration, n_long, chars, seed, "segment")
    multi_line = [
        t
        for t, y in zip(calibration.texts, calibration.labels, strict=True)
        if y == 0 and split_segments(t)
    ]
    long_benign = made_benign + multi_line
    n_long = len(long_benign)
    screener = Screener(backbone, replace(bank, segments=None), segments=True)
    results = screener.screen(long_benign + long_harmful, progress=progress)
    scores = np.array(
        [r.score if r.segment_score is None else r.segment_score for r in results],
        dtype=np.float64,
    )
    block, flag = _long_text_thresholds(bank, scores[:n_long], scores[n_long:])
    rule = SegmentRule(block, flag, len(long_benign), len(long_harmful))
    logger.info(
        "segment rule: block %.4f (long benign FPR %.3f, long harmful TPR %.3f), flag %.4f",
        block.value,
        block.fpr.value,
        block.tpr.value if block.tpr is not None else float("nan"),
        flag.value,
    )
    return replace(bank, segments=rule)


def fit_default_bank(
    backbone: Any,
    store: ActivationStore | None = None,
    *,
    train: RequestSet | None = None,
    calibration: RequestSet | None = None,
    specs: Sequence[ScreenSpec] | None = None,
    target_block_fpr: float = 0.01,
    target_flag_fpr: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    save: bool = True,
    span: bool = False,
    segments: bool = False,
) -> ScreenBank:
    """Return a bank fitted on the bundled requests (or the given splits), saved to the catalog.

    With ``span`` (and a mean-pooled primary) the long-text span rule is fitted too
    (``fit_span_rule``, on texts made from the calibration split). It is off by default: on
    MiniLM it caught 4 of 100 harmful requests buried in long benign text (none without it) while
    blocking 1 of 100 long benign texts and raising the evaluation FPR at block from 1.02% to 1.12%.
    With ``segments`` the multi-paragraph segment rule is fitted too (``fit_segment_rule``).
    """
    if (train is None) != (calibration is None):
        raise InvalidInputError("Give both train and calibration requests, or neither.")
    if train is None or calibration is None:
        train, calibration = default_training_data(seed=seed)
    store = store if store is not None else ActivationStore()
    bank = fit_screens(
        backbone,
        store,
        train=train,
        calibration=calibration,
        specs=specs if specs is not None else default_specs(backbone.n_layers),
        target_block_fpr=target_block_fpr,
        target_flag_fpr=target_flag_fpr,
        seed=seed,
        progress=progress,
    )
    if span and bank.screen(bank.primary).spec.pooling == "mean":
        bank = fit_span_rule(backbone, bank, calibration, seed=seed, progress=progress)
    if segments:
        bank = fit_segment_rule(backbone, bank, calibration, seed=seed, progress=progress)
    if save:
        path = save_to_catalog(bank)
        logger.info("screen bank %s saved to %s", bank.version, path)
    return bank


def load_or_fit_bank(
    backbone: Any, *, store: ActivationStore | None = None, progress: bool = True
) -> tuple[ScreenBank, bool]:
    """Return the backbone's latest bank, fitting and saving the default one when there is none.

    The second value says whether the bank was fitted now.
    """
    bank = latest_bank(backbone)
    if bank is not None:
        return bank, False
    logger.info("no screen bank for %s yet: fitting the default screens", backbone.name)
    return fit_default_bank(backbone, store, progress=progress), True
