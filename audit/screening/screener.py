"""Screening whole requests: windows over long texts, per-window scores, the tokens that drove them.

A ``Screener`` binds a ``ScreenBank`` to the backbone it was fitted on. Texts longer than the
backbone's context are cut into overlapping token windows (never just the head of the text); every
window is scored by every screen and a text takes, per screen, its highest-scoring window, so a
harmful passage buried in long benign text is read where it is. A text written with look-alike
letters, fullwidth forms or invisible characters is also scored in its canonical form
(``audit.screening.normalize``), and its highest window over both forms decides. Texts over
``max_chars`` are refused (``TextTooLongError``; the HTTP API answers 413).

Scores come from the activations of a forward pass: ``score_windows`` reads them from any forward
that captured the bank's hooks, and ``screen_forward`` also decides there every text that forward
read whole, so the serving path screens the forward its heads already ran and only windows beyond
the first cost another pass. Each decision names its top contributing tokens:
a linear screen's logit is a sum over tokens (mean pooling: each token's activation times the
weights, divided by the token count; max pooling: each dimension's weight times its maximum, given
to the token holding it), so the tokens with the largest terms are the ones that drove it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from audit.screening import kernels
from audit.screening.normalize import canonical_text
from audit.screening.screens import Action, Screen, ScreenBank, ScreenDecision
from probes.errors import FingerprintMismatchError, InvalidInputError

DEFAULT_MAX_CHARS = 100_000
DEFAULT_TOP_K = 8
DEFAULT_SPAN_TOKENS = 32
MAX_CANONICAL_GROWTH = 4  # NFKC can lengthen a text; its canonical form is cut at 4x
MAX_SEGMENTS = 64  # a text's lines beyond this many are merged into runs of lines


class TextTooLongError(InvalidInputError):
    """A text longer than the screener's ``max_chars`` (the API answers 413)."""


# The per-request values below are built for every request served, so they are slotted and not
# frozen (a frozen dataclass's __init__ costs about 3x: 1.9 against 0.5 us for five fields);
# treat them as values: change them with dataclasses.replace.
@dataclass(slots=True)
class WindowScore:
    """One window's raw logits per screen and the primary screen's top contributing tokens."""

    logits: dict[str, float]
    top_tokens: tuple[tuple[str, float], ...]
    n_tokens: int
    span_logit: float | None = None  # the primary's strongest run of span_tokens tokens
    segment: bool = False  # a window of one of the text's segments, screened on its own


@dataclass(slots=True)
class ScreenResult:
    """One text's decision, aggregated over its windows (the highest primary score decides)."""

    decision: ScreenDecision
    top_tokens: tuple[tuple[str, float], ...]
    layers: tuple[int, ...]
    n_tokens: int
    n_windows: int
    window: int  # index of the deciding window
    window_scores: tuple[float, ...] = field(default=())  # the primary's score per window
    span_score: float | None = None  # the primary's calibrated span maximum, over windows
    segment_score: float | None = None  # the primary's highest segment score (segment rule)
    n_segment_windows: int = 0  # windows of segments screened on their own (0: one segment)

    @property
    def action(self) -> str:
        return self.decision.decision

    @property
    def score(self) -> float:
        return self.decision.score


class _Reader:
    """One (hook, pooling) read of a forward: every screen's weights on it, where its columns go.

    ``weights`` is [d_model, k] (``rows`` the same as [k, d_model], contiguous, for the compiled
    pass); ``slots`` are its columns' places among the forward's read columns (see
    ``Screener.__init__``). ``primary`` is the index, among its columns, of the primary screen's,
    if the primary reads it.
    """

    __slots__ = ("pooling", "primary", "rows", "slots", "weights")

    def __init__(self, pooling: str, weights: np.ndarray, primary: int | None) -> None:
        self.pooling = pooling
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.rows = np.ascontiguousarray(self.weights.T)
        self.primary = primary
        self.slots: list[int] = []


@dataclass(slots=True)
class _Scored:
    """One forward's rows as the screens read them, in arrays: objects are built when asked."""

    logits: np.ndarray  # [rows, screens] raw logits (intercepts included), float64
    span: np.ndarray | None  # [rows] the primary's strongest-span logit (None: no span read)
    n_tokens: list[int]  # real tokens per row, special tokens included
    top_tokens: list[tuple[tuple[str, float], ...]]  # the primary's top contributing tokens


class _Direction:
    """A screen's logit as per-token terms: weights per layer in the backbone's raw units."""

    def __init__(self, screen: Screen, d_model: int) -> None:
        coef = np.asarray(screen.probe.coef_, dtype=np.float64).reshape(-1)
        self.weights = [
            torch.from_numpy(coef[i * d_model : (i + 1) * d_model].astype(np.float32))
            for i in range(len(screen.spec.layers))
        ]
        self.intercept = float(np.asarray(screen.probe.intercept_).reshape(-1)[0])
        self.readers = screen.spec.readers


class Screener:
    """Screens texts with a bank on its own backbone: windows, scores, decisions, top tokens."""

    def __init__(
        self,
        backbone: object,
        bank: ScreenBank,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        window_tokens: int | None = None,
        stride: int | None = None,
        batch_size: int = 32,
        top_k: int = DEFAULT_TOP_K,
        span_tokens: int = DEFAULT_SPAN_TOKENS,
        cross_fingerprint: bool = False,
        segments: bool | None = None,
    ) -> None:
        fingerprint = getattr(backbone, "fingerprint", None)
        # A bank on another backbone is refused unless the caller asks for a cross-fingerprint
        # evaluation by name (a checkpoint audit measuring the deployed screens on a new
        # checkpoint); serving never does.
        self.cross_fingerprint = fingerprint != bank.fingerprint
        if self.cross_fingerprint and not cross_fingerprint:
            raise FingerprintMismatchError(
                f"Screen bank {bank.version} was fitted on backbone {bank.backbone!r} "
                f"(fingerprint {bank.fingerprint[:12]}), not on the loaded "
                f"{getattr(backbone, 'name', '?')!r} ({str(fingerprint)[:12]}): refit the screens "
                "on this backbone (`audit screen fit`) rather than screen with the wrong probes."
            )
        if max_chars < 1:
            raise InvalidInputError(f"max_chars must be a positive int. Got {max_chars} instead.")
        self.backbone = backbone
        self.bank = bank
        # Multi-line texts are also screened segment by segment when the bank has a segment
        # rule (or the caller asks, e.g. to fit one); single-line texts never cost more.
        self.segments = bank.segments is not None if segments is None else bool(segments)
        self.max_chars = int(max_chars)
        self.batch_size = int(batch_size)
        self.top_k = int(top_k)
        tok = backbone.tokenizer  # type: ignore[attr-defined]
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tok = tok
        self._prefix, self._suffix = _special_frame(tok)
        max_len = int(backbone.max_length)  # type: ignore[attr-defined]
        self.window_tokens = max_len if window_tokens is None else int(window_tokens)
        n_frame = len(self._prefix) + len(self._suffix)
        if not n_frame + 2 <= self.window_tokens <= max_len:
            raise InvalidInputError(
                f"window_tokens must be an int in [{n_frame + 2}, {max_len}] (the backbone's "
                f"max_length). Got {self.window_tokens} instead."
            )
        self._content = self.window_tokens - n_frame
        self.stride = self._content // 2 if stride is None else int(stride)
        if not 1 <= self.stride <= self._content:
            raise InvalidInputError(
                f"stride must be an int in [1, {self._content}]. Got {self.stride} instead."
            )
        d_model = int(bank.d_model)
        if d_model != int(getattr(backbone, "d_model", d_model)):
            raise FingerprintMismatchError(
                f"Screen bank {bank.version} reads d_model {d_model} activations; "
                f"{getattr(backbone, 'name', '?')!r} has d_model {backbone.d_model}: "  # type: ignore[attr-defined]
                "a cross-fingerprint evaluation needs the same architecture."
            )
        self._directions = {s.spec.name: _Direction(s, d_model) for s in bank.screens}
        self._names = [s.spec.name for s in bank.screens]
        self._intercepts = np.array([self._directions[n].intercept for n in self._names])
        # Per (hook, pooling): the screen columns that read it and their weights on it.
        stacks: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
        for col, name in enumerate(self._names):
            direction = self._directions[name]
            for reader, w in zip(direction.readers, direction.weights, strict=True):
                stacks.setdefault(reader, []).append((col, w))
        primary_col = self._names.index(bank.primary)
        # The span read needs a primary screen that is mean-pooled on every layer it reads.
        primary_spec = bank.screen(bank.primary).spec
        self.span_tokens: int | None = None
        if primary_spec.pooling == "mean":
            self.span_tokens = bank.span.tokens if bank.span is not None else span_tokens
        self._primary_col = primary_col
        # Per hook, its readers: every screen's weights on each (hook, pooling) side by side.
        self._plan: dict[str, list[_Reader]] = {}
        for (hook, pooling), pairs in sorted(stacks.items()):
            weights = torch.stack([w for _, w in pairs], dim=1).numpy()
            at = next((i for i, (c, _) in enumerate(pairs) if c == primary_col), None)
            self._plan.setdefault(hook, []).append(_Reader(pooling, weights, at))
        self.hooks = sorted(self._plan)
        # One compiled pass (kernels.score) reads each hook once, in order: every mean reader's
        # columns and, when a max reader reads it too, its maxima. First / last readers (and
        # every non-mean reader when the primary screen is one: its terms must be ready before
        # that pass) read in numpy. Read columns are numbered in that order: means, the compiled
        # pass's maxima, the rest; one 0/1 matrix maps them onto the screens' logits.
        readers = [(h, r) for h, rs in self._plan.items() for r in rs]
        self._primary_reads_other = any(
            r.primary is not None and r.pooling != "mean" for _, r in readers
        )
        means = [(h, r) for h, r in readers if r.pooling == "mean"]
        maxima = [(h, r) for h, r in readers if r.pooling == "max"]
        if self._primary_reads_other:
            maxima = []
        self._others = [(h, r) for h, r in readers if r.pooling != "mean" and (h, r) not in maxima]
        read_cols: list[int] = []
        primary_mean: list[int] = []  # the primary's mean columns among the read columns
        for hook, planned in [*means, *maxima, *self._others]:
            cols = [c for c, _ in stacks[(hook, planned.pooling)]]
            planned.slots = list(range(len(read_cols), len(read_cols) + len(cols)))
            if planned.primary is not None and planned.pooling == "mean":
                primary_mean.append(planned.slots[planned.primary])
            read_cols += cols
        self._selector = np.zeros((len(read_cols), len(self._names)))
        self._selector[np.arange(len(read_cols)), read_cols] = 1.0
        mean_of, max_of = dict(means), dict(maxima)
        # (At least one hook: the compiled pass also counts tokens and picks the top ones.)
        self._read_hooks = [h for h in self._plan if h in mean_of or h in max_of] or self.hooks[:1]
        no_columns = np.zeros((0, d_model), dtype=np.float32)
        self._n_compiled = sum(len(r.slots) for _, r in [*means, *maxima])
        self._is_special = self._special_flags(tok)
        self._score_plan = kernels.ScorePlan(
            [mean_of[h].rows if h in mean_of else no_columns for h in self._read_hooks],
            [max_of[h].rows if h in max_of else no_columns for h in self._read_hooks],
            self._selector[: self._n_compiled],
            self._intercepts,
            primary_col,
            primary_mean,
            self.span_tokens or 0,
            self.top_k,
            self._is_special,
        )
        kernels.warm_up(self._score_plan)  # compile (or load) the kernels now, not on a request
        # All-Platt banks calibrate every screen's column in one vectorised pass.
        calibrators = [bank.screen(n).calibrator for n in self._names]
        self._platt: np.ndarray | None = None
        if all(c.method == "platt" for c in calibrators):
            self._platt = np.array([c.params for c in calibrators], dtype=np.float64).T
            self._platt_with_span = np.concatenate(
                [self._platt, self._platt[:, primary_col : primary_col + 1]], axis=1
            )
        self._calibrators = calibrators
        self._vocab = [str(t) for t in tok.convert_ids_to_tokens(list(range(len(tok))))]
        # One past the vocabulary: ids beyond it (a padded forward's filler) read as "".
        self._words = [*self._vocab, ""]
        self._pad_id = int(tok.pad_token_id or 0)
        self.primary = bank.screen(bank.primary)  # the screen whose score decides
        self._version = bank.version
        self.n_forward_passes = 0

    @staticmethod
    def _special_flags(tok: Any) -> np.ndarray:
        """Return one flag per vocabulary id (and one past it, for ids beyond the vocabulary)."""
        size = len(tok)
        flags = np.zeros(size + 1, dtype=bool)
        flags[[i for i in tok.all_special_ids if 0 <= i < size]] = True
        flags[-1] = True
        return flags

    @property
    def reuses_serving_window(self) -> bool:
        """Whether a serving forward (texts cut to max_length) is exactly this first window."""
        return self.window_tokens == int(self.backbone.max_length)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- input
    def check_texts(self, texts: Sequence[str]) -> list[str]:
        """Return ``texts`` as a list after refusing empty, non-string and over-long ones."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"Text {i} is a {type(text).__name__}, not a string.")
            if not text.strip():
                raise InvalidInputError(f"Text {i} is empty: give the request's text.")
            if len(text) > self.max_chars:
                raise TextTooLongError(
                    f"Text {i} has {len(text):,} characters; the screener reads at most "
                    f"{self.max_chars:,}. Split it, or raise the limit (max_chars / "
                    "--max-screen-chars)."
                )
        return texts

    def windows(self, text: str) -> list[list[int]]:
        """Return the token ids of each window of ``text``, special tokens included."""
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        starts = [0]
        while starts[-1] + self._content < len(ids):
            starts.append(starts[-1] + self.stride)
        return [self._prefix + ids[s : s + self._content] + self._suffix for s in starts]

    # ---------------------------------------------------------------- scoring
    def score_windows(
        self,
        acts: Mapping[str, torch.Tensor],
        mask: torch.Tensor,
        input_ids: torch.Tensor,
    ) -> list[WindowScore]:
        """Return each row's window score from per-token activations of a forward.

        ``acts[hook]`` is [rows, pos, d_model] for every hook in ``self.hooks``; ``mask`` and
        ``input_ids`` are the forward's [rows, pos] (right-padded; only the first
        ``mask.shape[1]`` ids are read).
        """
        return self._windows(self._score_batch(acts, mask, input_ids))

    def _score_batch(
        self,
        acts: Mapping[str, torch.Tensor],
        mask: torch.Tensor,
        input_ids: torch.Tensor,
    ) -> _Scored:
        """Return every row's raw logits, span logit and top tokens from one forward's activations.

        One compiled call (``kernels.score``) reads every hook once for all its mean- and
        max-pooled screens and summarises each row; first and last readers read in numpy.
        """
        # numpy and compiled kernels from here: torch's threads would cost more than they save.
        m = np.asarray(_numpy(mask), dtype=np.int64)
        n_rows, n_pos = m.shape
        ids = np.asarray(_numpy(input_ids), dtype=np.int64)[:, :n_pos]
        if ids.shape[1] < n_pos:  # the forward padded wider than the ids
            ids = np.pad(ids, ((0, 0), (0, n_pos - ids.shape[1])), constant_values=0)
        extra = others = None
        if self._primary_reads_other:  # its terms from those readers must be ready first
            n_real = np.maximum((m != 0).sum(1), 1)
            others, extra = self._read_others(acts, m, n_real)
        logits, spans, n_real, values, top_ids, counts = kernels.score(
            self._score_plan, [_float_numpy(acts[h]) for h in self._read_hooks], m, ids, extra
        )
        if self._others:  # first / last readers (or all non-mean ones): rare, in numpy
            if others is None:
                others, _ = self._read_others(acts, m, n_real)
            # (A primary read by them is not mean-pooled, so it has no span read to correct.)
            logits += others @ self._selector[self._n_compiled :]
        word = self._words.__getitem__
        top_tokens = [
            tuple(zip(map(word, row_ids[:n]), row_values[:n], strict=True))
            for row_ids, row_values, n in zip(
                top_ids.tolist(), values.tolist(), counts.tolist(), strict=True
            )
        ]
        return _Scored(
            logits, spans if self.span_tokens is not None else None, n_real.tolist(), top_tokens
        )

    def _read_others(
        self, acts: Mapping[str, torch.Tensor], m: np.ndarray, n_real: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the numpy-read readers' columns ([rows, theirs], in read-column order) and the
        primary's per-token terms from them, if it reads any."""
        first = self._n_compiled
        columns = np.zeros((m.shape[0], len(self._selector) - first))
        terms = None
        for hook, reader in self._others:
            at = slice(reader.slots[0] - first, reader.slots[-1] + 1 - first)
            share = self._pool_other(reader, _float_numpy(acts[hook]), m, n_real, columns, at)
            if share is not None:
                terms = share if terms is None else terms + share
        return columns, terms

    def _pool_other(
        self,
        reader: _Reader,
        h: np.ndarray,
        m: np.ndarray,
        n_real: np.ndarray,
        per_row: np.ndarray,
        slots: slice,
    ) -> np.ndarray | None:
        """Write a max / first / last reader's per-row logits into ``per_row[:, slots]``; return
        the primary's per-token terms if the primary reads it (``m``: the mask, right-padded)."""
        n_rows, n_pos = m.shape
        if reader.pooling == "max":
            top = _masked_max(h, n_real)
            per_row[:, slots] = top @ reader.weights
            if reader.primary is None:
                return None
            # Each dimension's term goes to the token holding its maximum.
            held = np.where(m[:, :, None] != 0, h, -np.inf)
            winner = held.argmax(1)  # [rows, d_model]
            share = top * reader.weights[:, reader.primary]
            terms = np.zeros((n_rows, n_pos), dtype=np.float32)
            for r in range(n_rows):
                terms[r] += np.bincount(winner[r], weights=share[r], minlength=n_pos)
            return terms
        # first / last: one token carries the whole term
        at = np.zeros(n_rows, dtype=np.int64) if reader.pooling == "first" else n_real - 1
        values = h[np.arange(n_rows), at] @ reader.weights
        per_row[:, slots] = values
        if reader.primary is None:
            return None
        terms = np.zeros((n_rows, n_pos), dtype=np.float32)
        terms[np.arange(n_rows), at] = values[:, reader.primary]
        return terms

    def _windows(self, scored: _Scored, rows: Sequence[int] | None = None) -> list[WindowScore]:
        """Return ``rows`` of a scored forward (all by default) as window scores."""
        names = self._names
        logits = scored.logits.tolist()
        spans = [None] * len(logits) if scored.span is None else scored.span.tolist()
        return [
            WindowScore(
                dict(zip(names, logits[r], strict=True)),
                scored.top_tokens[r],
                scored.n_tokens[r],
                spans[r],
            )
            for r in (range(len(logits)) if rows is None else rows)
        ]

    @staticmethod
    def _token_terms(
        direction: _Direction,
        acts: Mapping[str, torch.Tensor],
        mask: torch.Tensor,
        n_real: torch.Tensor,
    ) -> torch.Tensor:
        """Return each token's share of a screen's logit (less the intercept), [rows, pos]."""
        terms = torch.zeros(mask.shape, dtype=torch.float32)
        for (hook, pooling), w in zip(direction.readers, direction.weights, strict=True):
            h = acts[hook].float().cpu()
            if pooling == "mean":
                terms += (h @ w) * mask / n_real.unsqueeze(1)
            elif pooling == "max":
                masked = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
                winner = masked.argmax(1)  # [rows, d_model]: the token holding each maximum
                values = masked.gather(1, winner.unsqueeze(1)).squeeze(1) * w  # [rows, d_model]
                terms.scatter_add_(1, winner, values)
            elif pooling == "first":
                terms[:, 0] += h[:, 0] @ w
            else:  # last
                last = n_real - 1
                terms[torch.arange(len(last)), last] += h[torch.arange(len(last)), last] @ w
        return terms

    def decide(self, windows: Sequence[WindowScore]) -> ScreenResult:
        """Return one text's result from the scores of its windows (in text order)."""
        return self.decide_all([windows])[0]

    def decide_all(self, texts: Sequence[Sequence[WindowScore]]) -> list[ScreenResult]:
        """Return each text's result from its windows' scores (calibrated in one pass per screen)."""
        if not self.segments:  # no segment windows are made: every window reads the whole text
            if any(not windows for windows in texts):
                raise InvalidInputError("A text needs at least one window to be screened.")
            return self._decide_whole(texts)
        whole = [[w for w in windows if not w.segment] for windows in texts]
        if any(not windows for windows in whole):
            raise InvalidInputError("A text needs at least one window to be screened.")
        results = self._decide_whole(whole)
        parts = [[w for w in windows if w.segment] for windows in texts]
        if any(parts):
            results = self._with_segments(results, parts)
        return results

    def _with_segments(
        self, results: list[ScreenResult], parts: Sequence[Sequence[WindowScore]]
    ) -> list[ScreenResult]:
        """Return ``results`` with each text's highest segment score (and the segment rule's
        decision, when the bank has one)."""
        primary, name = self.primary, self.bank.primary
        flat = [w for windows in parts for w in windows]
        scores = primary.calibrator(np.array([w.logits[name] for w in flat])).tolist()
        rule = self.bank.segments
        out = []
        start = 0
        for result, windows in zip(results, parts, strict=True):
            if not windows:
                out.append(result)
                continue
            own = scores[start : start + len(windows)]
            start += len(windows)
            best = int(np.argmax(own))
            done = replace(result, segment_score=own[best], n_segment_windows=len(windows))
            decision = result.decision
            score = decision.score
            if rule is not None:
                block, flag = decision.block_threshold, decision.flag_threshold
                score = rule.effective(decision.score, own[best], block, flag)
            if score > decision.score:  # the segment decides: its tokens explain it
                action: Action = "block" if score >= block else "flag" if score >= flag else "allow"
                decision = replace(
                    decision, decision=action, score=score, scores={**decision.scores, name: score}
                )
                done = replace(done, decision=decision, top_tokens=windows[best].top_tokens)
            out.append(done)
        return out

    def _decide_whole(self, texts: Sequence[Sequence[WindowScore]]) -> list[ScreenResult]:
        flat = [w for windows in texts for w in windows]
        names = self._names
        logits = np.array([[w.logits[n] for n in names] for w in flat], dtype=np.float64)
        spans = None
        if self.span_tokens is not None:
            spans = np.array([-np.inf if w.span_logit is None else w.span_logit for w in flat])
        return self._decide_arrays(
            logits,
            spans,
            [len(windows) for windows in texts],
            [w.top_tokens for w in flat],
            [w.n_tokens for w in flat],
        )

    def _decide_arrays(
        self,
        logits: np.ndarray,
        spans: np.ndarray | None,
        counts: Sequence[int],
        top_tokens: Sequence[tuple[tuple[str, float], ...]],
        n_tokens: Sequence[int],
    ) -> list[ScreenResult]:
        """Return each text's result from its windows' raw logits ([windows, screens], texts'
        windows consecutive, ``counts`` per text), span logits, top tokens and token counts."""
        p_col = self._primary_col
        if spans is not None:  # the span logit is calibrated as the primary's: one more column
            logits = np.concatenate([logits, spans[:, None]], axis=1)
        calibrated = self._calibrate_with_span(logits, spans is not None)
        primary = self.primary
        block, flag = primary.block.value, primary.flag.value
        single = all(c == 1 for c in counts)
        starts = list(range(len(counts))) if single else np.cumsum([0, *counts[:-1]]).tolist()
        # Per text (rows), every screen's highest window score (columns in bank order; the span
        # score last, when read).
        maxima = calibrated if single else np.maximum.reduceat(calibrated, starts, axis=0)
        main = calibrated[:, p_col].tolist()
        rows = maxima.tolist()
        n_screens = len(self._names)
        rule = self.bank.span if spans is not None else None
        names, version, layers, screen = (
            self._names,
            self._version,
            primary.spec.layers,
            self.bank.primary,
        )
        results = []
        for t, (count, start) in enumerate(zip(counts, starts, strict=True)):
            row = rows[t]
            # The deciding window: the primary's highest (the only one, for most requests).
            at = 0 if count == 1 else int(np.argmax(main[start : start + count]))
            span_score = row[n_screens] if spans is not None else None
            score = row[p_col]
            if rule is not None:
                effective = rule.effective(score, row[n_screens], block, flag)
                if effective > score:  # the span decides: its window's tokens explain it
                    if count > 1:
                        at = int(np.argmax(calibrated[start : start + count, n_screens]))
                    score = effective
            action: Action = "block" if score >= block else "flag" if score >= flag else "allow"
            scores = dict(zip(names, row, strict=False))
            scores[screen] = score
            results.append(
                ScreenResult(
                    ScreenDecision(action, score, screen, version, block, flag, scores),
                    top_tokens[start + at],
                    layers,
                    n_tokens[start] if count == 1 else sum(n_tokens[start : start + count]),
                    count,
                    at,
                    (main[start],) if count == 1 else tuple(main[start : start + count]),
                    span_score,
                )
            )
        return results

    def _calibrate_with_span(self, logits: np.ndarray, with_span: bool) -> np.ndarray:
        """Calibrate [windows, screens (+ the span logit, as the primary's)] logits."""
        if self._platt is not None:
            params = self._platt_with_span if with_span else self._platt
            return kernels.platt(logits, params[0], params[1])
        calibrators = [*self._calibrators, self.primary.calibrator][: logits.shape[1]]
        return np.stack([c(logits[:, j]) for j, c in enumerate(calibrators)], axis=1)

    def screen_forward(
        self,
        acts: Mapping[str, torch.Tensor],
        mask: torch.Tensor,
        input_ids: torch.Tensor,
        texts: Sequence[str],
    ) -> list[ScreenResult | WindowScore]:
        """Screen a serving forward's rows: a result for each text that forward read whole.

        A row is decided here, in one batched pass with the others, when its text fitted the
        forward untruncated, has no look-alike form to screen too and no segments; every other
        row gets its first window's score, for ``screen(first_windows=...)`` to finish with the
        text's remaining windows. ``texts[i]`` is row i's text.
        """
        if not self.reuses_serving_window:
            raise InvalidInputError(
                "screen_forward needs window_tokens equal to the backbone's max_length."
            )
        scored = self._score_batch(acts, mask, input_ids)
        done = [
            r
            for r, text in enumerate(texts)
            if scored.n_tokens[r] < self.window_tokens and self._one_window(text)
        ]
        out: list[ScreenResult | WindowScore | None] = [None] * len(texts)
        if done:
            every = len(done) == len(texts)
            at = slice(None) if every else np.asarray(done)
            results = self._decide_arrays(
                scored.logits[at],
                None if scored.span is None else scored.span[at],
                [1] * len(done),
                scored.top_tokens if every else [scored.top_tokens[r] for r in done],
                scored.n_tokens if every else [scored.n_tokens[r] for r in done],
            )
            for r, result in zip(done, results, strict=True):
                out[r] = result
        rest = [r for r, o in enumerate(out) if o is None]
        for r, window in zip(rest, self._windows(scored, rest), strict=True):
            out[r] = window
        return [o for o in out if o is not None]

    def _one_window(self, text: str) -> bool:
        """Whether a text that fits one window is screened by that window alone (no look-alike
        form, no segments)."""
        if canonical_text(text) is not text:
            return False
        return not (self.segments and split_segments(text))

    def screen(
        self,
        texts: Sequence[str],
        *,
        first_windows: Mapping[int, WindowScore | ScreenResult] | None = None,
        progress: bool = False,
    ) -> list[ScreenResult]:
        """Return one result per text, every window of every text scored.

        ``first_windows`` maps a text's index to what a serving forward already produced for it
        (``screen_forward``; ``reuses_serving_window``): its finished result, or its first
        window's score, and then only the remaining windows run here.
        """
        texts = self.check_texts(texts)
        given = first_windows or {}
        done = {i: r for i, r in given.items() if isinstance(r, ScreenResult)}
        if len(done) == len(texts):  # the serving forward finished every text
            return [done[i] for i in range(len(texts))]
        rest = [i for i in range(len(texts)) if i not in done]
        reuse = {k: w for k, i in enumerate(rest) if isinstance(w := given.get(i), WindowScore)}
        scored = self.score_texts([texts[i] for i in rest], first_windows=reuse, progress=progress)
        done.update(zip(rest, self.decide_all(scored), strict=True))
        return [done[i] for i in range(len(texts))]

    def score_texts(
        self,
        texts: Sequence[str],
        *,
        first_windows: Mapping[int, WindowScore] | None = None,
        progress: bool = False,
    ) -> list[list[WindowScore]]:
        """Return every window's score (each screen's raw logit, top tokens) per text, in order."""
        texts = self.check_texts(texts)
        reuse = dict(first_windows or {})
        if reuse and not self.reuses_serving_window:
            raise InvalidInputError(
                "first_windows needs window_tokens equal to the backbone's max_length."
            )
        jobs: list[tuple[int, int, list[int]]] = []  # (text, window, ids)
        per_text: list[list[WindowScore | None]] = []
        first_segment: list[int] = []  # per text: the index of its first segment window
        for i, text in enumerate(texts):
            wins = self.windows(text)
            canonical = canonical_text(text)
            if canonical is not text and canonical.strip():
                # Look-alike letters or invisible characters: the canonical form's windows are
                # scored too, and the text's highest window decides (NFKC can lengthen a text:
                # its canonical form is cut at MAX_CANONICAL_GROWTH times the original).
                wins = wins + self.windows(canonical[: MAX_CANONICAL_GROWTH * len(text)])
            n_whole = len(wins)
            if self.segments:
                for part in split_segments(canonical if canonical is not text else text):
                    wins = wins + self.windows(part)
            per_text.append([None] * len(wins))
            first_segment.append(n_whole)
            for j, window_ids in enumerate(wins):
                if j == 0 and i in reuse:
                    per_text[i][0] = reuse[i]
                else:
                    jobs.append((i, j, window_ids))
        jobs.sort(key=lambda job: len(job[2]), reverse=True)  # similar lengths share a batch
        bar = tqdm(
            total=len(jobs),
            desc="screening",
            unit="window",
            disable=not progress or not jobs,
            leave=False,
        )
        pad = self._pad_id
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            width = len(chunk[0][2])
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, _, row) in enumerate(chunk):
                ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
                mask[r, : len(row)] = 1
            acts, used_mask = self.backbone.forward_tokens(ids, mask, self.hooks)  # type: ignore[attr-defined]
            self.n_forward_passes += 1
            for (i, j, _), score in zip(
                chunk, self.score_windows(acts, used_mask, ids), strict=True
            ):
                per_text[i][j] = score if j < first_segment[i] else replace(score, segment=True)
            bar.update(len(chunk))
        bar.close()
        return [[w for w in scored if w is not None] for scored in per_text]

    def scores(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Return the primary screen's calibrated score per text (window maximum)."""
        return np.array([r.score for r in self.screen(texts, progress=progress)])


_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85\x0b\x0c]+")


def split_segments(text: str, max_segments: int = MAX_SEGMENTS) -> list[str]:
    """Return a text's segments (its non-blank lines), or [] when it has fewer than two.

    A text with more than ``max_segments`` lines has consecutive lines merged into
    ``max_segments`` runs of about equal line counts, so a long document costs a bounded number of
    extra rows.
    """
    lines = [line.strip() for line in _LINE_BREAKS.split(text)]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        return []
    if len(lines) <= max_segments:
        return lines
    bounds = np.linspace(0, len(lines), max_segments + 1).round().astype(int)
    return [" ".join(lines[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _project(flat: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return ``flat @ weights`` ([n, d] by [d, k]) one column at a time.

    BLAS's matrix-vector product reads a skinny product's rows faster than its matrix-matrix one
    does for a handful of columns (measured: 0.17 ms against 0.29 ms for 2,048 x 384 by 2).
    """
    if weights.shape[1] == 1:
        return flat @ weights
    return np.stack([flat @ weights[:, c] for c in range(weights.shape[1])], axis=1)


def _masked_max(h: np.ndarray, n_real: np.ndarray) -> np.ndarray:
    """Return each row's maximum over its first ``n_real[row]`` positions ([rows, pos, d]).

    Nothing is copied or filled with -inf. Positions every row holds are reduced in one call;
    past the shortest row, either each remaining position is folded in where rows hold it, or
    each row is reduced over its own tokens, whichever takes fewer calls (a serving batch of
    texts of similar length needs a handful).
    """
    shortest, n_pos = int(n_real.min()), h.shape[1]
    if shortest >= n_pos:
        return h.max(1)
    if n_pos - shortest > len(n_real):
        return np.stack([h[r, :n].max(0) for r, n in enumerate(n_real.tolist())])
    top = h[:, :shortest].max(1)
    for pos in range(shortest, n_pos):
        np.maximum(top, h[:, pos], out=top, where=(n_real > pos)[:, None])
    return top


def _numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return a CPU tensor's values as numpy without a copy (other tensors are copied).

    ``Tensor.numpy`` refuses a GPU tensor or one that requires grad; asking first costs more
    than the call itself right after a forward.
    """
    if isinstance(t, np.ndarray):
        return t
    try:
        return t.numpy()
    except (RuntimeError, TypeError):
        return t.detach().cpu().numpy()


def _float_numpy(t: torch.Tensor) -> np.ndarray:
    """Return activations as float32 numpy (a view when they already are, on the CPU)."""
    return _numpy(t if t.dtype == torch.float32 else t.float())


def _special_frame(tok: object) -> tuple[list[int], list[int]]:
    """Return the special token ids a tokenizer puts before and after a text's own tokens."""
    probe = "hello world"
    framed = list(tok(probe)["input_ids"])  # type: ignore[operator]
    bare = list(tok(probe, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    for i in range(len(framed) - len(bare) + 1):
        if framed[i : i + len(bare)] == bare:
            return framed[:i], framed[i + len(bare) :]
    raise InvalidInputError(
        f"Cannot tell which special tokens {type(tok).__name__} adds around a text; "
        "screen with a tokenizer whose framing is a fixed prefix and suffix."
    )
