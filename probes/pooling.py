"""Pooling of per-token activations into one vector per text, masking padding."""

from __future__ import annotations

import torch

from probes.errors import UnknownNameError

POOLINGS = ("mean", "first", "last", "max")
TOKENS = "tokens"  # not a pooling: every real token, stored ragged


def check_pooling(pooling: str) -> str:
    """Return ``pooling`` if it is a known pooling or ``"tokens"``; raise otherwise."""
    if pooling not in POOLINGS and pooling != TOKENS:
        raise UnknownNameError(
            f"Unknown pooling {pooling!r}. Expected one of: {', '.join(POOLINGS)}, or "
            f"{TOKENS!r} for every token."
        )
    return pooling


def pool(
    acts: torch.Tensor,  # [batch, pos, d_model]
    attention_mask: torch.Tensor,  # [batch, pos], 1 on real tokens; real tokens first
    pooling: str,
) -> torch.Tensor:  # [batch, d_model]
    """Return one vector per row: mean or max over real tokens, the first, or the last real one."""
    mask = attention_mask.to(dtype=torch.bool, device=acts.device)
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(acts.dtype)
        return (acts * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if pooling == "first":
        return acts[:, 0]
    if pooling == "last":
        last = mask.sum(1).clamp_min(1) - 1
        return acts[torch.arange(acts.shape[0], device=acts.device), last]
    if pooling == "max":
        return acts.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    raise UnknownNameError(f"Unknown pooling {pooling!r}. Expected one of: {', '.join(POOLINGS)}.")
