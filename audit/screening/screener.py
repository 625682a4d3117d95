"""Screening whole requests: windows over long texts, per-window scores, the tokens that drove them.

A ``Screener`` binds a ``ScreenBank`` to the backbone it was fitted on. Texts longer than the
backbone's context are cut into overlapping token windows (never just the head of the text); every
window is scored by every screen and a text takes, per screen, its highest-scoring window, so a
harmful passage buried in long benign text is read where it is. Texts over ``max_chars`` are
refused (``TextTooLongError``; the HTTP API answers 413).

Scores come from the activations of a forward pass: ``score_windows`` reads them from any forward
that captured the bank's hooks, so the serving path screens the forward its heads already ran and
only windows beyond the first cost another pass. Each decision names its top contributing tokens:
a linear screen's logit is a sum over tokens (mean pooling: each token's activation times the
weights, divided by the token count; max pooling: each dimension's weight times its maximum, given
to the token holding it), so the tokens with the largest terms are the ones that drove it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from audit.screening.screens import Screen, ScreenBank, ScreenDecision
from probes.errors import FingerprintMismatchError, InvalidInputError
from probes.pooling import pool

DEFAULT_MAX_CHARS = 100_000
DEFAULT_TOP_K = 8


class TextTooLongError(InvalidInputError):
    """A text longer than the screener's ``max_chars`` (the API answers 413)."""


@dataclass(frozen=True)
class WindowScore:
    """One window's raw logits per screen and the primary screen's top contributing tokens."""

    logits: dict[str, float]
    top_tokens: tuple[tuple[str, float], ...]
    n_tokens: int


@dataclass(frozen=True)
class ScreenResult:
    """One text's decision, aggregated over its windows (the highest primary score decides)."""

    decision: ScreenDecision
    top_tokens: tuple[tuple[str, float], ...]
    layers: tuple[int, ...]
    n_tokens: int
    n_windows: int
    window: int  # index of the deciding window
    window_scores: tuple[float, ...] = field(default=())  # the primary's score per window

    @property
    def action(self) -> str:
        return self.decision.decision

    @property
    def score(self) -> float:
        return self.decision.score


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
    ) -> None:
        fingerprint = getattr(backbone, "fingerprint", None)
        if fingerprint != bank.fingerprint:
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
        self._directions = {s.spec.name: _Direction(s, d_model) for s in bank.screens}
        self.hooks = sorted({h for h, _ in bank.readers})
        self._special = set(int(i) for i in tok.all_special_ids)
        self._pad_id = int(tok.pad_token_id or 0)
        self.n_forward_passes = 0

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
    @torch.inference_mode()
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
        mask = mask.to(torch.bool).cpu()
        input_ids = input_ids[:, : mask.shape[1]].cpu()
        if input_ids.shape[1] < mask.shape[1]:  # the forward padded wider than the ids
            extra = mask.shape[1] - input_ids.shape[1]
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=self._pad_id)
        n_real = mask.sum(1).clamp_min(1)
        pooled: dict[tuple[str, str], torch.Tensor] = {}
        for reader in self.bank.readers:
            pooled[reader] = pool(acts[reader[0]], mask, reader[1]).float().cpu()
        logits = {}
        for name, direction in self._directions.items():
            total = torch.full((mask.shape[0],), direction.intercept, dtype=torch.float64)
            for reader, w in zip(direction.readers, direction.weights, strict=True):
                total += (pooled[reader] @ w).double()
            logits[name] = total.numpy()
        contrib = self._token_terms(self._directions[self.bank.primary], acts, mask, n_real)
        special = torch.isin(input_ids, torch.tensor(sorted(self._special), dtype=input_ids.dtype))
        contrib = contrib.masked_fill(~mask | special, float("-inf"))
        k = min(self.top_k, contrib.shape[1])
        values, index = contrib.topk(k, dim=1)
        out = []
        for row in range(mask.shape[0]):
            keep = [j for j in range(k) if np.isfinite(float(values[row, j]))]
            ids = [int(input_ids[row, int(index[row, j])]) for j in keep]
            pieces = self._tok.convert_ids_to_tokens(ids)
            top = tuple(
                (str(p), round(float(values[row, j]), 6)) for p, j in zip(pieces, keep, strict=True)
            )
            out.append(
                WindowScore(
                    logits={n: float(v[row]) for n, v in logits.items()},
                    top_tokens=top,
                    n_tokens=int(n_real[row]),
                )
            )
        return out

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
        if not windows:
            raise InvalidInputError("A text needs at least one window to be screened.")
        bank = self.bank
        primary = bank.screen(bank.primary)
        per_screen = {
            s.spec.name: s.calibrator(np.array([w.logits[s.spec.name] for w in windows]))
            for s in bank.screens
        }
        main = per_screen[bank.primary]
        best = int(np.argmax(main))
        score = float(main[best])
        action = primary.decide(np.array([score]))[0]
        decision = ScreenDecision(
            decision=action,
            score=score,
            screen=bank.primary,
            version=bank.version,
            block_threshold=primary.block.value,
            flag_threshold=primary.flag.value,
            scores={name: float(np.max(v)) for name, v in per_screen.items()},
        )
        return ScreenResult(
            decision=decision,
            top_tokens=windows[best].top_tokens,
            layers=primary.spec.layers,
            n_tokens=sum(w.n_tokens for w in windows),
            n_windows=len(windows),
            window=best,
            window_scores=tuple(float(v) for v in main),
        )

    def screen(
        self,
        texts: Sequence[str],
        *,
        first_windows: Mapping[int, WindowScore] | None = None,
        progress: bool = False,
    ) -> list[ScreenResult]:
        """Return one result per text, every window of every text scored.

        ``first_windows`` maps a text's index to its first window's score when a serving forward
        already produced it (``reuses_serving_window``); only the remaining windows run here.
        """
        texts = self.check_texts(texts)
        reuse = dict(first_windows or {})
        if reuse and not self.reuses_serving_window:
            raise InvalidInputError(
                "first_windows needs window_tokens equal to the backbone's max_length."
            )
        jobs: list[tuple[int, int, list[int]]] = []  # (text, window, ids)
        per_text: list[list[WindowScore | None]] = []
        for i, text in enumerate(texts):
            wins = self.windows(text)
            per_text.append([None] * len(wins))
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
                per_text[i][j] = score
            bar.update(len(chunk))
        bar.close()
        results = []
        for scored in per_text:
            assert all(w is not None for w in scored)
            results.append(self.decide([w for w in scored if w is not None]))
        return results

    def scores(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Return the primary screen's calibrated score per text (window maximum)."""
        return np.array([r.score for r in self.screen(texts, progress=progress)])


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
