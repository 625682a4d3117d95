"""Tenant heads: small models trained on the frozen backbone's stored activations.

Three kinds read the backbone at one hook:
- ``linear`` and ``mlp`` read the pooled ``resid_post`` of one block (standardised inside the head);
- ``blocks`` is a trainable copy of the backbone's last ``k`` blocks, initialised from its own
  weights, reading the per-token activations entering block ``n_layers - k``; it ends in pooling
  and a classifier, or (``task="lm"``, decoder backbones) in a copy of the final norm and the
  backbone's own unembedding, for text in the tenant's style.
Training reads the inputs from the ActivationStore: the frozen prefix runs once per corpus, never
per epoch. A head is saved as safetensors + JSON and refuses another backbone's fingerprint.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from probes.artifacts import check_tensors, read_meta, read_safetensors
from probes.atomic import atomic_write
from probes.backbone import Backbone, TailRunner
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.hooks import resid_post
from probes.metrics import auroc
from probes.pooling import POOLINGS, pool
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HEAD_KINDS = ("linear", "mlp", "blocks")
TASKS = ("classification", "regression", "lm")


@dataclass(frozen=True)
class HeadSpec:
    """What to train: the kind of head, where it reads the backbone, and how it is fitted."""

    kind: str = "linear"
    layer: int | None = None  # linear/mlp: the block whose resid_post is read (default: last)
    k: int = 2  # blocks: how many of the backbone's last blocks are copied and trained
    pooling: str = "mean"
    task: str = "classification"
    hidden: int = 256  # mlp width
    epochs: int = 30
    lr: float | None = None  # default: 1e-3 for linear/mlp, 1e-4 for blocks
    batch_size: int = 32
    patience: int = 3  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2
    weight_decay: float = 0.0
    seed: int = 0

    def resolved(self, backbone: Backbone) -> HeadSpec:
        """Return the spec checked against ``backbone``, with defaults filled in."""
        if self.kind not in HEAD_KINDS:
            raise InvalidInputError(
                f"Unknown head kind {self.kind!r}. Expected one of: {', '.join(HEAD_KINDS)}."
            )
        if self.task not in TASKS:
            raise InvalidInputError(
                f"Unknown task {self.task!r}. Expected one of: {', '.join(TASKS)}."
            )
        if self.pooling not in POOLINGS:
            raise InvalidInputError(
                f"Unknown pooling {self.pooling!r}. Expected one of: {', '.join(POOLINGS)}."
            )
        n = backbone.n_layers
        layer = n - 1 if self.layer is None else self.layer
        if self.kind != "blocks" and not 0 <= layer < n:
            raise InvalidInputError(
                f"The 'layer' parameter of a {self.kind} head must be an int in [0, {n - 1}]. "
                f"Got {self.layer} instead."
            )
        if self.kind == "blocks" and not 1 <= self.k < n:
            raise InvalidInputError(
                f"The 'k' parameter of a blocks head must be an int in [1, {n - 1}] (the "
                f"backbone has {n} blocks). Got {self.k} instead."
            )
        if self.task == "lm" and (self.kind != "blocks" or not is_decoder(backbone)):
            raise InvalidInputError(
                "task='lm' needs kind='blocks' on a decoder backbone (e.g. smollm2); "
                f"got kind={self.kind!r} on {backbone.name} ({backbone.architecture})."
            )
        for name in ("epochs", "batch_size", "hidden"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(
                    f"The {name!r} parameter must be a positive int. Got {getattr(self, name)}."
                )
        if not 0.05 <= self.val_fraction <= 0.5:
            raise InvalidInputError(
                f"val_fraction must be in [0.05, 0.5]. Got {self.val_fraction} instead."
            )
        lr = self.lr if self.lr is not None else (1e-4 if self.kind == "blocks" else 1e-3)
        return replace(self, layer=n - 1 if self.kind == "blocks" else layer, lr=lr)


def is_decoder(backbone: Backbone) -> bool:
    """Return whether ``backbone`` is a causal language model (can serve ``lm`` heads)."""
    return backbone.architecture.endswith("ForCausalLM")


class HeadMeta(BaseModel):
    """Everything saved next to a head's weights; enough to rebuild and check it."""

    schema_version: int = SCHEMA_VERSION
    head_id: str
    tenant_id: str
    kind: str
    task: str
    input_hook: str
    layer: int  # linear/mlp: block read; blocks: last block of the copy (n_layers - 1)
    k: int = 0  # blocks copied (blocks heads only)
    pooling: str = "mean"
    hidden: int = 0
    d_model: int
    n_outputs: int
    label_names: list[str] = Field(default_factory=list)
    target_mean: float = 0.0  # regression heads predict standardised values; outputs undo it
    target_scale: float = 1.0
    backbone_name: str
    backbone_fingerprint: str
    corpus_id: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


@dataclass(frozen=True)
class HeadOutput:
    """One text's result from a head: a label with class probabilities, or a value."""

    label: str | None
    scores: dict[str, float]
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "scores": self.scores}
        if self.value is not None:
            out["value"] = self.value
        return out


class PooledHead(nn.Module):
    """A linear or MLP head on one pooled activation vector, standardised inside the head."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, d_model: int, n_outputs: int, hidden: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_model))
        self.register_buffer("scale", torch.ones(d_model))
        if hidden:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, n_outputs)
            )
        else:
            self.net = nn.Linear(d_model, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, d_model] -> [n, n_outputs]
        return self.net((x - self.mean) / self.scale)

    def folded_linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (weight [n_outputs, d_model], bias) acting on raw activations (linear heads)."""
        if not isinstance(self.net, nn.Linear):
            raise InvalidInputError("Only linear heads fold into one weight matrix.")
        weight = self.net.weight / self.scale
        return weight, self.net.bias - weight @ self.mean


class BlocksHead(nn.Module):
    """A trainable copy of the backbone's last ``k`` blocks, then pooling and a classifier."""

    def __init__(self, backbone: Backbone, k: int, n_outputs: int, pooling: str, task: str) -> None:
        super().__init__()
        first = backbone.n_layers - k
        own = backbone.tail(first)  # the backbone's own blocks, to copy
        self.blocks = nn.ModuleList(
            copy.deepcopy(own.layers[i]) for i in range(first, backbone.n_layers)
        )
        for param in self.blocks.parameters():
            param.requires_grad_(True)
        self.pooling = pooling
        self.task = task
        self.first_block = first
        self.last_hook = resid_post(backbone.n_layers - 1)
        if task == "lm":
            if own.final_norm is None or own.unembed is None:
                raise InvalidInputError(f"{backbone.name} has no final norm and unembedding.")
            self.final_norm: nn.Module | None = copy.deepcopy(own.final_norm)
            for param in self.final_norm.parameters():
                param.requires_grad_(True)
            self.classifier: nn.Module | None = None
        else:
            self.final_norm = None
            self.classifier = nn.Linear(backbone.d_model, n_outputs)
        # Not a submodule: the runner shares the backbone's frozen weights, never saved here.
        runner = backbone.tail(first, list(self.blocks))
        object.__setattr__(self, "_runner", runner)

    @property
    def runner(self) -> TailRunner:
        return self.__dict__["_runner"]

    def forward(self, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return logits: [n, n_outputs], or [n, pos, vocab] for language-model heads."""
        out = self.runner(acts, mask, [self.last_hook])[self.last_hook]
        if self.final_norm is not None:
            return self.runner.unembed(self.final_norm(out))
        assert self.classifier is not None
        return self.classifier(pool(out, mask, self.pooling))


class Head:
    """A trained head with its metadata: reads one hook of the backbone, returns per-text outputs."""

    def __init__(self, meta: HeadMeta, module: nn.Module) -> None:
        self.meta = meta
        self.module = module.eval()

    @property
    def head_id(self) -> str:
        return self.meta.head_id

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def input_hook(self) -> str:
        return self.meta.input_hook

    @property
    def reads_tokens(self) -> bool:
        """Whether the head reads per-token activations (blocks) rather than a pooled vector."""
        return self.meta.kind == "blocks"

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def nbytes(self) -> int:
        """Return the bytes of the head's own tensors (shared backbone weights not counted)."""
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def logits(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return raw outputs for pooled inputs [n, d] or per-token inputs [n, pos, d] + mask."""
        with torch.inference_mode():
            if self.reads_tokens:
                if mask is None:
                    raise InvalidInputError("A blocks head needs the attention mask of its input.")
                return self.module(x, mask)
            return self.module(x)

    def outputs(self, logits: torch.Tensor) -> list[HeadOutput]:
        """Return one HeadOutput per row of ``logits`` (classification or regression heads)."""
        if self.meta.task == "lm":
            raise InvalidInputError(
                f"Head {self.head_id} is a language-model head: it writes text, it does not "
                "label it. Use audit.tenants.lm.generate (or perplexity) instead of predict."
            )
        if self.meta.task == "regression":
            mean, scale = self.meta.target_mean, self.meta.target_scale
            return [HeadOutput(None, {}, float(v) * scale + mean) for v in logits[:, 0].tolist()]
        probs = torch.softmax(logits.float(), dim=-1).tolist()
        names = self.meta.label_names
        return [
            HeadOutput(
                names[int(np.argmax(p))], {n: float(v) for n, v in zip(names, p, strict=True)}
            )
            for p in probs
        ]

    def predict(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[HeadOutput]:
        """Return the head's output for each input row."""
        return self.outputs(self.logits(x, mask))


def build_module(meta: HeadMeta, backbone: Backbone) -> nn.Module:
    """Return an untrained module with the shapes ``meta`` describes."""
    if meta.kind == "blocks":
        return BlocksHead(backbone, meta.k, meta.n_outputs, meta.pooling, meta.task)
    return PooledHead(meta.d_model, meta.n_outputs, meta.hidden if meta.kind == "mlp" else 0)


# ---------------------------------------------------------------------------- training
@dataclass(frozen=True)
class _Targets:
    y: np.ndarray  # class indices (classification) or standardised floats (regression)
    label_names: tuple[str, ...]
    n_outputs: int
    mean: float = 0.0
    scale: float = 1.0


def _targets(labels: Sequence[Any], task: str) -> _Targets:
    if task == "regression":
        try:
            y = np.asarray([float(v) for v in labels], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"A regression head needs numeric labels; {exc}. Give numbers, or use "
                "task='classification'."
            ) from exc
        if not np.isfinite(y).all() or float(y.std()) == 0.0:
            raise InvalidInputError("A regression head needs finite labels that are not all equal.")
        mean, scale = float(y.mean()), float(y.std())
        return _Targets((y - mean) / scale, (), 1, mean, scale)
    names = tuple(sorted({str(v) for v in labels}))
    if len(names) < 2:
        raise InvalidInputError(
            f"A classification head needs at least two labels; the corpus has one ({names}). "
            "Add examples of another label."
        )
    index = {n: i for i, n in enumerate(names)}
    return _Targets(np.asarray([index[str(v)] for v in labels], dtype=np.int64), names, len(names))


def _split(targets: _Targets, spec: HeadSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    stratify = targets.y if targets.label_names else None
    n_val = max(int(round(n * spec.val_fraction)), len(targets.label_names), 1)
    if n - n_val < max(len(targets.label_names), 2):
        raise InvalidInputError(
            f"The corpus has {n} examples: too few to hold out a validation split. "
            f"Give at least {2 * n_val + 2} examples."
        )
    try:
        train, val = train_test_split(
            np.arange(n), test_size=n_val, random_state=spec.seed, stratify=stratify
        )
    except ValueError as exc:
        raise InvalidInputError(
            f"Cannot split the corpus for validation: {exc}. Give at least 2 examples per label."
        ) from exc
    return np.sort(train), np.sort(val)


class _Inputs:
    """Stored activations a head trains on: pooled rows or ragged per-token rows."""

    def __init__(self, pooled: np.ndarray | None = None, tokens: Any = None) -> None:
        self.pooled = pooled
        self.tokens = tokens

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pooled is not None:
            return torch.from_numpy(np.asarray(self.pooled[rows], dtype=np.float32)), None
        acts, mask = self.tokens.padded(rows)
        return acts, mask


def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return nn.functional.mse_loss(out[:, 0], y)
    return nn.functional.cross_entropy(out, y)


def train_head(
    backbone: Backbone,
    store: ActivationStore,
    texts: Sequence[str],
    labels: Sequence[Any] | None,
    spec: HeadSpec,
    *,
    tenant_id: str,
    head_id: str,
    corpus_id: str | None = None,
    progress: bool = True,
    on_epoch: Any = None,
) -> Head:
    """Return a head trained on ``texts``/``labels`` from the store's activations of the corpus.

    A seeded split holds out ``val_fraction`` for early stopping on validation loss; the best
    epoch's weights are kept and its metrics recorded in ``head.meta.metrics``. ``on_epoch``
    (optional) is called with (epoch, n_epochs, metrics) after each epoch.
    """
    spec = spec.resolved(backbone)
    started = time.perf_counter()
    if spec.task == "lm":
        from audit.tenants.lm import train_lm_head

        return train_lm_head(
            backbone,
            store,
            texts,
            spec,
            tenant_id=tenant_id,
            head_id=head_id,
            corpus_id=corpus_id,
            progress=progress,
            on_epoch=on_epoch,
        )
    if labels is None or len(labels) != len(texts):
        raise InvalidInputError(
            f"Give one label per text: {len(texts)} texts, "
            f"{'no' if labels is None else len(labels)} labels."
        )
    targets = _targets(labels, spec.task)
    train, val = _split(targets, spec, len(texts))
    if spec.kind == "blocks":
        first = backbone.n_layers - spec.k
        hook = resid_post(first - 1)
        extraction = store.get(
            backbone, texts, [hook], ("tokens",), progress=progress, dataset_name=corpus_id
        )
        inputs = _Inputs(tokens=extraction.tokens[hook])
    else:
        assert spec.layer is not None
        hook = resid_post(spec.layer)
        extraction = store.get(
            backbone, texts, [hook], (spec.pooling,), progress=progress, dataset_name=corpus_id
        )
        inputs = _Inputs(pooled=extraction.pooled[(hook, spec.pooling)])
    meta = HeadMeta(
        head_id=head_id,
        tenant_id=tenant_id,
        kind=spec.kind,
        task=spec.task,
        input_hook=hook,
        layer=int(spec.layer if spec.layer is not None else backbone.n_layers - 1),
        k=spec.k if spec.kind == "blocks" else 0,
        pooling=spec.pooling,
        hidden=spec.hidden if spec.kind == "mlp" else 0,
        d_model=backbone.d_model,
        n_outputs=targets.n_outputs,
        label_names=list(targets.label_names),
        target_mean=targets.mean,
        target_scale=targets.scale,
        backbone_name=backbone.name,
        backbone_fingerprint=backbone.fingerprint,
        corpus_id=corpus_id,
        spec={k: v for k, v in spec.__dict__.items()},
    )
    torch.manual_seed(spec.seed)
    module = build_module(meta, backbone)
    if isinstance(module, PooledHead) and inputs.pooled is not None:
        x = inputs.pooled[train]
        module.mean.copy_(torch.from_numpy(x.mean(0)))
        scale = torch.from_numpy(x.std(0))
        module.scale.copy_(torch.where(scale < 1e-6, torch.ones_like(scale), scale))
    metrics = _fit(module, inputs, targets, train, val, spec, progress, on_epoch)
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    meta.metrics = metrics
    return Head(meta, module)


def _fit(
    module: nn.Module,
    inputs: _Inputs,
    targets: _Targets,
    train: np.ndarray,
    val: np.ndarray,
    spec: HeadSpec,
    progress: bool,
    on_epoch: Any,
) -> dict[str, Any]:
    params = [p for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=spec.lr or 1e-3, weight_decay=spec.weight_decay)
    rng = np.random.default_rng(spec.seed)
    y_all = torch.from_numpy(targets.y)
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(module.state_dict())
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, spec.epochs + 1), desc="training head", disable=not progress, leave=False)
    for epoch in bar:
        module.train()
        total = 0.0
        order = rng.permutation(train)
        for start in range(0, len(order), spec.batch_size):
            rows = order[start : start + spec.batch_size]
            x, mask = inputs.batch(rows)
            out = module(x, mask) if mask is not None else module(x)
            loss = _loss(spec.task, out, y_all[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(rows)
        val_metrics = _evaluate(module, inputs, targets, val, spec)
        record = {"epoch": epoch, "train_loss": total / len(train), **val_metrics}
        history.append(record)
        bar.set_postfix(val_loss=f"{val_metrics['val_loss']:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, spec.epochs, record)
        if val_metrics["val_loss"] < best_loss - 1e-6:
            best_loss, best_epoch = val_metrics["val_loss"], epoch
            best_state = copy.deepcopy(module.state_dict())
        elif epoch - best_epoch >= spec.patience:
            break
    module.load_state_dict(best_state)
    module.eval()
    best = history[best_epoch - 1]
    return {
        **{k: v for k, v in best.items() if k != "epoch"},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "history": history,
    }


def _evaluate(
    module: nn.Module, inputs: _Inputs, targets: _Targets, rows: np.ndarray, spec: HeadSpec
) -> dict[str, float]:
    module.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(rows), 256):
            x, mask = inputs.batch(rows[start : start + 256])
            outs.append(module(x, mask) if mask is not None else module(x))
    out = torch.cat(outs)
    y = torch.from_numpy(targets.y[rows])
    metrics = {"val_loss": float(_loss(spec.task, out, y))}
    if spec.task == "regression":
        pred = out[:, 0].numpy()
        resid = pred - targets.y[rows]
        metrics["val_rmse"] = float(np.sqrt(np.mean(resid**2))) * targets.scale
        var = float(np.var(targets.y[rows])) or 1.0
        metrics["val_r2"] = float(1 - np.mean(resid**2) / var)
        return metrics
    probs = torch.softmax(out, -1).numpy()
    metrics["val_accuracy"] = float(np.mean(probs.argmax(1) == targets.y[rows]))
    if targets.n_outputs == 2 and len(np.unique(targets.y[rows])) == 2:
        metrics["val_auroc"] = float(auroc(probs[:, 1], targets.y[rows]))
    return metrics


def validation_metrics(
    head: Head,
    backbone: Backbone,
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Return ``head``'s metrics on its own validation split of its corpus, read on ``backbone``.

    The split is the one training held out (the head's recorded ``val_fraction`` and seed), and
    the figures are those training records (``val_loss``, ``val_accuracy``/``val_auroc`` or
    ``val_rmse``/``val_r2``) plus ``n_val``: on the backbone the head was trained on they give
    back ``head.meta.metrics``; on another they show what the head keeps there.
    """
    meta = head.meta
    if meta.task == "lm":
        raise InvalidInputError(
            f"Head {meta.head_id} is a language-model head; it has no labelled validation split."
        )
    if len(labels) != len(texts):
        raise InvalidInputError(
            f"Give one label per text: {len(texts)} texts, {len(labels)} labels."
        )
    known = set(HeadSpec.__dataclass_fields__)
    spec = HeadSpec(**{k: v for k, v in meta.spec.items() if k in known})
    targets = _targets(labels, meta.task)
    if meta.task == "classification" and list(targets.label_names) != meta.label_names:
        raise InvalidInputError(
            f"Head {meta.head_id} was trained on labels {meta.label_names}; the corpus given has "
            f"{list(targets.label_names)}. Give the head's own corpus."
        )
    _, val = _split(targets, spec, len(texts))
    val_texts = [texts[i] for i in val]
    if head.reads_tokens:
        extraction = backbone.extract(val_texts, [meta.input_hook], ("tokens",), progress=progress)
        inputs = _Inputs(tokens=extraction.tokens[meta.input_hook])
    else:
        extraction = backbone.extract(
            val_texts, [meta.input_hook], (meta.pooling,), progress=progress
        )
        inputs = _Inputs(pooled=extraction.pooled[(meta.input_hook, meta.pooling)])
    held_out = replace(targets, y=targets.y[val])
    metrics = _evaluate(head.module, inputs, held_out, np.arange(len(val)), spec)
    return {**metrics, "n_val": int(len(val))}


# ------------------------------------------------------------------------- saving
WEIGHTS_FILE = "head.safetensors"
META_FILE = "head.json"


def save_head(head: Head, folder: str | Path) -> Path:
    """Write ``head`` to ``folder`` (head.safetensors + head.json, each atomically); return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in head.module.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    text = head.meta.model_dump_json(indent=2)
    atomic_write(folder / META_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def _check_meta(meta: HeadMeta, meta_path: Path, backbone: Backbone, fix: str) -> None:
    """Raise CorruptArtifactError naming the field when ``meta`` cannot describe a real head."""

    def bad(field: str, want: str, got: object) -> CorruptArtifactError:
        return CorruptArtifactError(f"{meta_path}: {field} must be {want}; got {got!r}. {fix}")

    n = backbone.n_layers
    if meta.kind not in HEAD_KINDS:
        raise bad("kind", f"one of {list(HEAD_KINDS)}", meta.kind)
    if meta.task not in TASKS:
        raise bad("task", f"one of {list(TASKS)}", meta.task)
    if meta.pooling not in POOLINGS:
        raise bad("pooling", f"one of {list(POOLINGS)}", meta.pooling)
    if meta.d_model != backbone.d_model:
        raise bad("d_model", f"the backbone's width {backbone.d_model}", meta.d_model)
    if meta.n_outputs < 1:
        raise bad("n_outputs", "a positive int", meta.n_outputs)
    if meta.kind == "blocks":
        if not 1 <= meta.k < n:
            raise bad("k", f"an int in [1, {n - 1}] for a blocks head", meta.k)
        hook = resid_post(n - meta.k - 1)
    else:
        if not 0 <= meta.layer < n:
            raise bad("layer", f"an int in [0, {n - 1}]", meta.layer)
        if meta.kind == "mlp" and meta.hidden < 1:
            raise bad("hidden", "a positive int for an mlp head", meta.hidden)
        hook = resid_post(meta.layer)
    if meta.input_hook != hook:
        raise bad("input_hook", f"{hook!r} (what its kind, layer and k read)", meta.input_hook)
    if meta.task == "classification" and (
        len(meta.label_names) != meta.n_outputs or len(set(meta.label_names)) < 2
    ):
        raise CorruptArtifactError(
            f"{meta_path}: label_names {meta.label_names!r} do not match n_outputs "
            f"{meta.n_outputs}; a classification head has one distinct name per output. {fix}"
        )
    if meta.task == "regression":
        if meta.n_outputs != 1:
            raise bad("n_outputs", "1 for a regression head", meta.n_outputs)
        if not math.isfinite(meta.target_mean):
            raise bad("target_mean", "a finite float", meta.target_mean)
        if not (math.isfinite(meta.target_scale) and meta.target_scale > 0):
            raise bad("target_scale", "a finite float > 0", meta.target_scale)
    if meta.task == "lm" and meta.kind != "blocks":
        raise bad("kind", "'blocks' for a language-model head", meta.kind)


def load_head(folder: str | Path, backbone: Backbone, *, allow_mismatch: bool = False) -> Head:
    """Return the head saved in ``folder``, checked against ``backbone``'s fingerprint.

    Refused, with a CorruptArtifactError naming the file, the field or tensor and the fix:
    metadata that does not parse or describes no head this backbone can hold (kind, task, layer,
    input hook, outputs, labels), a newer schema, a weights file that is not safetensors (a
    pickle is never loaded), is truncated, or whose tensors differ from the metadata's in name,
    shape or dtype, or hold NaN or infinite values. Another backbone's head raises
    FingerprintMismatchError unless ``allow_mismatch``.
    """
    folder = Path(folder)
    weights, meta_path = folder / WEIGHTS_FILE, folder / META_FILE
    if not weights.is_file() or not meta_path.is_file():
        raise CorruptArtifactError(
            f"No head in {folder}: expected {WEIGHTS_FILE} and {META_FILE}. Train it again."
        )
    fix = "Train the head again (or restore its folder from a backup)."
    meta = read_meta(HeadMeta, meta_path, "Head metadata", fix)
    if meta.schema_version > SCHEMA_VERSION:
        raise CorruptArtifactError(
            f"{meta_path} has schema_version {meta.schema_version}; this version reads up to "
            f"{SCHEMA_VERSION}. Upgrade the package."
        )
    if meta.backbone_fingerprint != backbone.fingerprint and not allow_mismatch:
        raise FingerprintMismatchError(
            f"Head {meta.head_id} was trained on backbone {meta.backbone_name} "
            f"({meta.backbone_fingerprint[:12]}), not on {backbone.name} "
            f"({backbone.fingerprint[:12]}). Retrain it on this backbone."
        )
    _check_meta(meta, meta_path, backbone, fix)
    tensors = read_safetensors(weights, "Head weights", fix, loader=load_file)
    module = build_module(meta, backbone)
    expected = {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items()}
    check_tensors(
        tensors,
        expected,
        f"The tensors in {weights} do not match its metadata (kind {meta.kind}, "
        f"{meta.n_outputs} outputs)",
        fix,
    )
    module.load_state_dict(tensors)
    for param in module.parameters():
        param.requires_grad_(False)
    return Head(meta, module)
