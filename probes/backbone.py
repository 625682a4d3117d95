"""The frozen backbone: booting through TransformerBridge, fingerprinting, extracting activations.

One place loads a backbone (``Backbone.load``) and one place extracts activations
(``Backbone.extract``). Residual-stream hooks run on a plain twin of the HF model (see
``probes.plain_model``) with forward hooks at the requested layers only, and the forward stops
after the deepest of them; any other hook name goes through the bridge's own ``run_with_cache``.
Both paths use the bridge's hook names and give the same activations (tests check it).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from probes.atomic import sha256_file
from probes.errors import CorruptArtifactError, InvalidInputError
from probes.hooks import block_of, check_hook_names, parse_resid, resid_post
from probes.plain_model import plain_twin
from probes.pooling import POOLINGS, TOKENS, check_pooling, pool

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class _StopForward(Exception):
    """Raised from a hook once the deepest needed layer has run."""


@dataclass(frozen=True)
class TokenBatch:
    """Tokenised texts, right-padded, with each text's real length and whether it was cut."""

    input_ids: torch.Tensor  # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos]
    lengths: np.ndarray  # [batch] real tokens per text
    truncated: np.ndarray  # [batch] bool


@dataclass
class RaggedTokens:
    """Per-token activations of many texts, concatenated: text i is rows offsets[i]:offsets[i+1]."""

    values: np.ndarray  # [total_tokens, d_model]
    offsets: np.ndarray  # [n_texts + 1] int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def text(self, i: int) -> np.ndarray:
        """Return text ``i``'s activations, [n_tokens, d_model]."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def padded(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the rows ``indices`` right-padded: acts [batch, pos, d_model] and mask [batch, pos]."""
        rows = [self.text(int(i)) for i in indices]
        width = max((len(r) for r in rows), default=0)
        acts = torch.zeros(len(rows), width, self.values.shape[1], dtype=torch.float32)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            acts[j, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.float32))
            mask[j, : len(r)] = 1
        return acts, mask


@dataclass
class Extraction:
    """Activations of a list of texts: pooled vectors per (hook, pooling) and ragged per-token ones."""

    pooled: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # [n, d_model]
    tokens: dict[str, RaggedTokens] = field(default_factory=dict)
    n_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _cached_digest(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime so an edited file is hashed again, an unchanged one once a process.
    return sha256_file(Path(path))


def _versions() -> dict[str, str]:
    return {pkg: importlib.metadata.version(pkg) for pkg in ("transformer-lens", "transformers")}


def fingerprint_folder(folder: Path) -> str:
    """Return the fingerprint of a model folder: its config and weight files plus bridge versions."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.exists():
        digest.update(b"config.json" + config.read_bytes())
    weights = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not weights:
        raise InvalidInputError(
            f"Model folder {folder} holds no weight files ({_WEIGHT_SUFFIXES})."
        )
    for path in weights:
        digest.update(str(path.relative_to(folder)).encode() + _file_digest(path).encode())
    for pkg, version in sorted(_versions().items()):
        digest.update(f"{pkg}=={version}".encode())
    return digest.hexdigest()[:16]


def check_weight_files(folder: Path) -> None:
    """Return nothing if every safetensors file in ``folder`` has a readable, complete header.

    Only the header and the file's length are read (no tensor data): a truncated or garbled
    file fails here with one line naming it, instead of deep inside the model loader.
    """
    from safetensors import safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error type for broken files
            raise CorruptArtifactError(
                f"{path} is not a readable safetensors file ({exc}): it is truncated or "
                "garbled. Re-export the checkpoint (save_pretrained writes safetensors) or "
                "copy it again from its source."
            ) from exc


def fingerprint_state(model: nn.Module, config_json: str) -> str:
    """Return the fingerprint of in-memory weights (for models with no folder, e.g. random ones)."""
    digest = hashlib.sha256(config_json.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for pkg, version in sorted(_versions().items()):
        digest.update(f"{pkg}=={version}".encode())
    return digest.hexdigest()[:16]


# Batching: a batch closes when it holds ``batch_size`` rows, or when the next (shorter) text
# would be padded by more than MAX_PADDING of the batch's width and the batch already holds
# MIN_SPLIT_TOKENS token slots (a smaller batch is not worth a forward of its own).
MAX_PADDING = 0.1
MIN_SPLIT_TOKENS = 512


def plan_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    max_padding: float | None = MAX_PADDING,
    min_split_tokens: int = MIN_SPLIT_TOKENS,
) -> list[np.ndarray]:
    """Return batches of text indices, longest texts first, that keep padding small.

    Texts are sorted by length (descending, stable) and cut into batches of at most
    ``batch_size`` rows; with ``max_padding`` set, a batch also closes before a text that is
    shorter than ``(1 - max_padding)`` of the batch's width once the batch holds
    ``min_split_tokens`` token slots. ``max_padding=None`` gives fixed-size sorted batches.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int. Got {batch_size} instead.")
    if max_padding is not None and not 0.0 <= max_padding < 1.0:
        raise InvalidInputError(
            f"max_padding must be a float in [0, 1) or None. Got {max_padding} instead."
        )
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, width = 0, 0
    for pos, i in enumerate(order):
        rows = pos - start
        if rows and (
            rows >= batch_size
            or (
                max_padding is not None
                and rows * width >= min_split_tokens
                and lengths[i] < (1.0 - max_padding) * width
            )
        ):
            batches.append(order[start:pos])
            start = pos
        if pos == start:
            width = int(lengths[i])
    if len(order):
        batches.append(order[start:])
    return batches


def padding_fraction(lengths: np.ndarray, batches: Sequence[np.ndarray]) -> float:
    """Return the fraction of token slots that are padding when ``batches`` run right-padded."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    return 1.0 - float(lengths.sum()) / slots if slots else 0.0


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# Architectures built from a config with random weights, for speed runs where no weights can be
# downloaded: ``random:<name>`` (or ``random-<name>``). Tokens come from the bundled MiniLM
# tokenizer (WordPiece, 30,522 ids, all inside every vocabulary below).
RANDOM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "gpt2-tiny": {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 2,
        "n_positions": 256,
    },
    "gpt2": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12},
    "gpt2-medium": {"model_type": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16},
    "gpt2-large": {"model_type": "gpt2", "n_layer": 36, "n_embd": 1280, "n_head": 20},
}
RANDOM_PREFIXES = ("random:", "random-")


def random_architecture(spec: str) -> str | None:
    """Return the ``RANDOM_ARCHITECTURES`` name a spec like ``random:gpt2-medium`` names, or None."""
    lowered = spec.strip().lower()
    prefix = next((p for p in RANDOM_PREFIXES if lowered.startswith(p)), None)
    if prefix is None:
        return None
    name = lowered[len(prefix) :]
    if name not in RANDOM_ARCHITECTURES:
        raise InvalidInputError(
            f"Unknown random architecture {name!r} in backbone {spec!r}. Expected one of "
            f"{', '.join('random:' + n for n in RANDOM_ARCHITECTURES)}."
        )
    return name


class Backbone:
    """A frozen backbone booted through TransformerBridge, with fast activation extraction.

    Use ``Backbone.load(spec)``: spec is a bundled alias (``minilm``, the default, or
    ``smollm2``), a local HF model folder, a Hugging Face model name (for users with a hub or
    a local HF cache), or ``random:<architecture>`` (``RANDOM_ARCHITECTURES``: random weights,
    for speed runs).
    """

    def __init__(
        self,
        bridge: Any,
        *,
        name: str,
        fingerprint: str,
        folder: Path | None = None,
        max_length: int | None = None,
    ) -> None:
        self.bridge = bridge
        self.name = name
        self.fingerprint = fingerprint
        self.folder = folder
        self.tokenizer = bridge.tokenizer
        cfg = bridge.cfg
        self.n_layers: int = int(cfg.n_layers)
        self.d_model: int = int(cfg.d_model)
        self.n_ctx: int = int(getattr(cfg, "n_ctx", 0) or 512)
        self.max_length = self.n_ctx if max_length is None else int(max_length)
        if not 2 <= self.max_length <= self.n_ctx:
            raise InvalidInputError(
                f"max_length must be an int in [2, {self.n_ctx}] (the model's context). "
                f"Got {max_length} instead."
            )
        self.device = next(bridge.original_model.parameters()).device
        self.hook_names: tuple[str, ...] = tuple(sorted(bridge.hook_dict))
        self.architecture = type(bridge.original_model).__name__
        self.n_forward_passes = 0  # backbone forwards from the embeddings (tests count them)
        self.n_tail_passes = 0  # forwards of later blocks only, from given activations
        self._lock = threading.Lock()
        self._plain_config = self._twin_config(bridge.original_model)
        self._plain, mapping = plain_twin(bridge.original_model, config=self._plain_config)
        self._plain_layers = [mapping[id(self._original(b))] for b in bridge.blocks]
        self._layer_returns_tuple = self._probe_layer_output()

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        spec: str | None = None,
        *,
        device: str = "cpu",
        max_length: int | None = None,
        weights: str = "pretrained",
        seed: int = 0,
    ) -> Backbone:
        """Return the frozen backbone named by ``spec`` (bundled alias, folder or HF name).

        ``weights="random"`` gives the same architecture and tokenizer with the architecture's
        own random initialisation, drawn from ``seed`` (a baseline for what an untrained
        network decodes); it is named ``<name>-random-<seed>`` and fingerprinted by its weights.
        """
        from probes.bundled import DEFAULT_BACKBONE, resolve_model_folder

        if weights not in ("pretrained", "random"):
            raise InvalidInputError(
                f"The 'weights' parameter of Backbone.load must be 'pretrained' or 'random'. "
                f"Got {weights!r} instead."
            )
        random_init = weights == "random"
        spec = spec or DEFAULT_BACKBONE
        architecture = random_architecture(spec)
        if architecture is not None:
            return cls._load_random_architecture(
                architecture, device=device, max_length=max_length, seed=seed
            )
        name, folder = resolve_model_folder(spec)
        if folder is not None:
            # A local folder needs nothing from a hub; stop any library from asking one.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            if not random_init:
                check_weight_files(folder)
        device = _resolve_device(device)
        from transformer_lens.model_bridge import TransformerBridge

        target = str(folder) if folder is not None else spec
        logger.info("booting backbone %s from %s on %s", name, target, device)
        try:
            # Without weights the bridge builds the model with ``from_config``, which draws
            # from torch's global generator: seed it, and give the caller's state back after.
            with _quiet_transformers(), torch.random.fork_rng(devices=[], enabled=random_init):
                if random_init:
                    torch.manual_seed(seed)
                bridge = TransformerBridge.boot_transformers(
                    target, device=device, load_weights=not random_init
                )
        except (OSError, ValueError) as exc:
            raise InvalidInputError(
                f"Could not boot backbone {spec!r}: {exc}. Give a bundled alias (minilm, smollm2), "
                "an existing Hugging Face model folder, or a model name present in your local "
                "Hugging Face cache (this machine may have no hub access)."
            ) from exc
        if random_init:  # from_config leaves device and dtype to the caller
            bridge.original_model.to(device=device, dtype=torch.float32)
        bridge.eval()
        for param in bridge.parameters():
            param.requires_grad_(False)
        if random_init:
            model: Any = bridge.original_model
            fingerprint = fingerprint_state(model, model.config.to_json_string())
            name, folder = f"{name}-random-{seed}", None  # the folder's weights are not its own
        elif folder is not None:
            fingerprint = fingerprint_folder(folder)
        else:
            model = bridge.original_model
            fingerprint = fingerprint_state(model, model.config.to_json_string())
        return cls(bridge, name=name, fingerprint=fingerprint, folder=folder, max_length=max_length)

    @classmethod
    def _load_random_architecture(
        cls, architecture: str, *, device: str, max_length: int | None, seed: int
    ) -> Backbone:
        """Return a backbone of ``RANDOM_ARCHITECTURES[architecture]`` with seeded random weights.

        It is named ``random-<architecture>-<seed>`` and its fingerprint starts with ``random-``.
        """
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from probes.bundled import minilm_folder

        device = _resolve_device(device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
        settings = dict(RANDOM_ARCHITECTURES[architecture])
        config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        name = f"random-{architecture}-{seed}"
        logger.info("building random backbone %s on %s", name, device)
        with _quiet_transformers(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        model.to(device=device, dtype=torch.float32).eval()
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=model, tokenizer=tokenizer, device=device
        )
        bridge.eval()
        for param in bridge.parameters():
            param.requires_grad_(False)
        fingerprint = "random-" + fingerprint_state(model, model.config.to_json_string())
        return cls(bridge, name=name, fingerprint=fingerprint, max_length=max_length)

    @staticmethod
    def _original(block: nn.Module) -> nn.Module:
        inner = block._modules.get("_original_component")
        return inner if inner is not None else block

    @staticmethod
    def _twin_config(model: Any) -> Any:
        """Return the config of the plain twin: a bare HF forward's settings, not the bridge's.

        The bridge forces eager attention and ``output_attentions`` so its attention hooks see
        the pattern; the plain twin only reads the residual stream through its own hooks, so it
        uses the fused kernel a bare HF model uses (where the architecture has one), and asks
        for no attention maps, hidden-state tuples or KV cache (transformers would otherwise
        install its output-capturing hooks on the twin and build a cache every forward).
        """
        twin = copy.copy(model.config)
        if getattr(model, "_supports_sdpa", False):
            twin._attn_implementation = "sdpa"
        for flag in ("output_attentions", "output_hidden_states", "use_cache"):
            if hasattr(twin, flag):
                setattr(twin, flag, False)
        return twin

    def _probe_layer_output(self) -> bool:
        seen: list[bool] = []

        def record(_m: nn.Module, _a: Any, out: Any) -> None:
            seen.append(isinstance(out, tuple))
            raise _StopForward

        batch = self.tokenize(["probe"])
        handle = self._plain_layers[0].register_forward_hook(record)
        try:
            with torch.inference_mode(), contextlib.suppress(_StopForward):
                self._plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            handle.remove()
        return bool(seen and seen[0])

    def info(self) -> dict[str, Any]:
        """Return a JSON-ready description: name, fingerprint, layers, d_model, context, versions."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_ctx": self.n_ctx,
            "max_length": self.max_length,
            "folder": str(self.folder) if self.folder else None,
            "device": str(self.device),
            "versions": _versions(),
        }

    def resid_hooks(self) -> list[str]:
        """Return the residual-output hook name of every block, in layer order."""
        return [resid_post(layer) for layer in range(self.n_layers)]

    # ------------------------------------------------------------ tokenising
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Return the texts tokenised, cut to ``max_length`` tokens and right-padded."""
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"  # real tokens first: position ids stay 0..n-1 for decoders
        enc = tok(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,
            padding=False,
        )
        ids = enc["input_ids"]
        if "overflow_to_sample_mapping" in enc:
            sample = list(enc["overflow_to_sample_mapping"])
            first: dict[int, int] = {}
            counts = np.zeros(len(texts), dtype=np.int64)
            for row, s in enumerate(sample):
                first.setdefault(s, row)
                counts[s] += 1
            rows = [ids[first[i]] for i in range(len(texts))]
            truncated = counts > 1
        else:  # slow tokenizers do not report overflow
            rows = ids
            full = tok(list(texts), truncation=False)["input_ids"]
            truncated = np.array([len(f) > self.max_length for f in full])
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max()) if len(rows) else 0
        # Right-padding in one step: the real slots of the [n, width] grid, in row-major order,
        # are exactly the token ids of the rows one after another.
        real = np.arange(width) < lengths[:, None]
        input_ids = np.full((len(rows), width), tok.pad_token_id or 0, dtype=np.int64)
        input_ids[real] = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())
        )
        return TokenBatch(
            torch.from_numpy(input_ids),
            torch.from_numpy(real.astype(np.int64)),
            lengths,
            np.asarray(truncated, dtype=bool),
        )

    # ----------------------------------------------------------- extraction
    def extract(
        self,
        texts: Sequence[str],
        hook_names: Sequence[str] | None = None,
        poolings: Sequence[str] = ("mean",),
        *,
        batch_size: int = 32,
        progress: bool = True,
        max_padding: float | None = MAX_PADDING,
    ) -> Extraction:
        """Return the activations of ``texts`` at ``hook_names`` (default: every block's resid_post).

        ``poolings`` may hold any of mean/first/last/max and ``"tokens"`` for per-token
        activations. Texts are sorted by length into batches of at most ``batch_size`` rows, cut
        further where padding would exceed ``max_padding`` of a batch (see ``plan_batches``), and
        the forward stops after the deepest layer needed.
        """
        from probes.datasets import validate_texts

        texts = validate_texts(texts)
        if not texts:
            raise InvalidInputError("No texts given: extract() needs at least one non-empty text.")
        hooks = check_hook_names(hook_names or self.resid_hooks(), self.hook_names)
        poolings = [check_pooling(p) for p in poolings]
        if not poolings:
            raise InvalidInputError(
                f"No pooling given; pass one or more of {POOLINGS} or 'tokens'."
            )
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int. Got {batch_size} instead.")
        batch = self.tokenize(texts)
        batches = plan_batches(batch.lengths, batch_size, max_padding=max_padding)
        order = np.concatenate(batches)
        result = Extraction(n_tokens=batch.lengths, truncated=batch.truncated)
        pooled: dict[tuple[str, str], list[np.ndarray]] = {
            (h, p): [] for h in hooks for p in poolings if p != TOKENS
        }
        token_rows: dict[str, list[np.ndarray]] = (
            {h: [] for h in hooks} if TOKENS in poolings else {}
        )
        bar = tqdm(
            total=len(texts),
            desc="extracting",
            unit="text",
            disable=not progress or len(texts) <= batch_size,
            leave=False,
        )
        with self._lock, torch.inference_mode(), bar:
            for idx in batches:
                width = int(batch.lengths[idx].max())
                ids = batch.input_ids[idx, :width].to(self.device)
                mask = batch.attention_mask[idx, :width].to(self.device)
                acts = self._forward(ids, mask, hooks)
                for (hook, pooling), chunks in pooled.items():
                    chunks.append(pool(acts[hook], mask, pooling).float().cpu().numpy())
                for hook, chunks in token_rows.items():
                    per_tok = acts[hook].float().cpu().numpy()
                    for j, length in enumerate(batch.lengths[idx]):
                        chunks.append(per_tok[j, :length])
                bar.update(len(idx))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        for key, chunks in pooled.items():
            result.pooled[key] = np.concatenate(chunks)[inverse]
        for hook, chunks in token_rows.items():
            rows = [chunks[i] for i in inverse]
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(r) for r in rows])
            values = np.concatenate(rows) if rows else np.zeros((0, self.d_model), np.float32)
            result.tokens[hook] = RaggedTokens(values.astype(np.float32), offsets)
        return result

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hook_names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        self.n_forward_passes += 1
        if all(parse_resid(h) is not None for h in hook_names):
            return self._forward_plain(input_ids, attention_mask, hook_names)
        return self._forward_bridge(input_ids, attention_mask, hook_names)

    def _forward_plain(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        hook_names: Sequence[str],
        model: nn.Module | None = None,
        layers: list[nn.Module] | None = None,
    ) -> dict[str, torch.Tensor]:
        model = model if model is not None else self._plain
        layers = layers if layers is not None else self._plain_layers
        parsed = {h: parse_resid(h) for h in hook_names}
        captured: dict[str, torch.Tensor] = {}
        # The last event in forward order: the output of the deepest block asked for, or the
        # input of a block when only its input is asked for.
        stop_post = max((p.layer for p in parsed.values() if p and p.post), default=-1)
        stop_pre = max((p.layer for p in parsed.values() if p and not p.post), default=-1)
        stop_at = ("pre", stop_pre) if stop_pre > stop_post else ("post", stop_post)
        handles = []
        for hook, p in parsed.items():
            assert p is not None
            layer = layers[p.layer]
            if p.post:
                handles.append(
                    layer.register_forward_hook(
                        self._capture_post(hook, captured, stop_at == ("post", p.layer))
                    )
                )
            else:
                handles.append(
                    layer.register_forward_pre_hook(
                        self._capture_pre(hook, captured, stop_at == ("pre", p.layer)),
                        with_kwargs=True,
                    )
                )
        try:
            with contextlib.suppress(_StopForward):
                model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    @staticmethod
    def _capture_post(hook: str, into: dict[str, torch.Tensor], stop: bool) -> Callable[..., None]:
        def fn(_module: nn.Module, _args: Any, output: Any) -> None:
            into[hook] = _first(output)
            if stop:
                raise _StopForward

        return fn

    @staticmethod
    def _capture_pre(hook: str, into: dict[str, torch.Tensor], stop: bool) -> Callable[..., None]:
        def fn(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            into[hook] = args[0] if args else kwargs["hidden_states"]
            if stop:
                raise _StopForward

        return fn

    def _forward_bridge(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hook_names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        blocks = [block_of(h) for h in hook_names]
        stop = (
            None if any(b is None for b in blocks) else max(b for b in blocks if b is not None) + 1
        )
        wanted = set(hook_names)
        _, cache = self.bridge.run_with_cache(
            input_ids,
            names_filter=lambda name: name in wanted,
            stop_at_layer=stop,
            attention_mask=attention_mask,
        )
        return {h: cache[h] for h in hook_names}

    # ---------------------------------------------------------------- resume
    def resume(
        self,
        from_layer: int,
        acts: torch.Tensor,  # [batch, pos, d_model]: resid_post of block from_layer
        attention_mask: torch.Tensor,  # [batch, pos]
        hook_names: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """Return later residual hooks computed from stored block-``from_layer`` activations.

        Blocks up to ``from_layer`` do not run: they pass their input through and the last one
        hands on ``acts`` (which callers may have edited: projected out, steered).
        """
        if not 0 <= from_layer < self.n_layers - 1:
            raise InvalidInputError(
                f"from_layer must be an int in [0, {self.n_layers - 2}]. Got {from_layer} instead."
            )
        hooks = check_hook_names(hook_names, self.hook_names)
        for hook in hooks:
            parsed = parse_resid(hook)
            if parsed is None or parsed.layer <= from_layer:
                raise InvalidInputError(
                    f"resume() serves residual hooks of blocks after {from_layer}; got {hook!r}."
                )
        runner = self.tail(from_layer + 1)
        with torch.inference_mode():
            return runner(acts, attention_mask, hooks)

    def tail(self, first_block: int, blocks: Sequence[nn.Module] | None = None) -> TailRunner:
        """Return a runner of blocks ``first_block``.. on activations entering ``first_block``.

        ``blocks``, when given, stand in for the backbone's own last ``len(blocks)`` blocks (a
        tenant's trainable copies); earlier blocks never run. The runner shares every weight
        tensor with the backbone (no copy) and may run with gradients on.
        """
        if not 1 <= first_block < self.n_layers:
            raise InvalidInputError(
                f"first_block must be an int in [1, {self.n_layers - 1}]. Got {first_block} instead."
            )
        return TailRunner(self, first_block, blocks)

    def forward_padded(
        self, texts: Sequence[str], hook_names: Sequence[str], *, width: int | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Return per-token activations [n, pos, d_model] of ``texts`` at ``hook_names``, and the mask.

        One forward of the whole list (the caller sizes it), in the given order, stopping after
        the deepest layer needed; the serving path uses it to read every head's input at once.
        ``width`` pads every row to that many positions (at least the longest text's): a text's
        activations then do not depend on which other texts share its batch.
        """
        batch = self.tokenize(texts)
        return self.forward_tokens(batch.input_ids, batch.attention_mask, hook_names, width=width)

    def forward_tokens(
        self,
        input_ids: torch.Tensor,  # [batch, pos], right-padded
        attention_mask: torch.Tensor,  # [batch, pos]
        hook_names: Sequence[str],
        *,
        width: int | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Return per-token activations of already tokenised rows (see ``forward_padded``)."""
        hooks = check_hook_names(hook_names, self.hook_names)
        ids, mask = input_ids, attention_mask
        if width is not None and width != ids.shape[1]:
            if width < int(mask.sum(1).max()):
                raise InvalidInputError(
                    f"width {width} is shorter than the longest row ({int(mask.sum(1).max())})."
                )
            if width < ids.shape[1]:
                ids, mask = ids[:, :width], mask[:, :width]
            else:
                extra = width - ids.shape[1]
                ids = nn.functional.pad(ids, (0, extra), value=self.tokenizer.pad_token_id or 0)
                mask = nn.functional.pad(mask, (0, extra), value=0)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with self._lock, torch.inference_mode():
            acts = self._forward(ids, mask, hooks)
        return acts, mask


class TailRunner:
    """Blocks ``first_block``.. of a backbone, run on activations entering ``first_block``."""

    def __init__(
        self, backbone: Backbone, first_block: int, blocks: Sequence[nn.Module] | None = None
    ) -> None:
        self.backbone = backbone
        self.first_block = first_block
        twin, mapping = plain_twin(backbone.bridge.original_model, config=backbone._plain_config)
        layers = [mapping[id(backbone._original(b))] for b in backbone.bridge.blocks]
        if blocks is not None and len(blocks) != len(layers) - first_block:
            raise InvalidInputError(
                f"A tail from block {first_block} needs {len(layers) - first_block} blocks; "
                f"got {len(blocks)}."
            )
        container = next(m for m in twin.modules() if layers[0] in m._modules.values())
        self._inject = _Passthrough(None, backbone._layer_returns_tuple)
        for name, child in list(container._modules.items()):
            if child not in layers:
                continue
            i = layers.index(child)
            if i < first_block - 1:
                container._modules[name] = _Passthrough(None, backbone._layer_returns_tuple)
            elif i == first_block - 1:
                container._modules[name] = self._inject
            elif blocks is not None:
                container._modules[name] = blocks[i - first_block]
            layers[i] = container._modules[name]  # type: ignore[assignment]
        self.layers = layers
        self.model = twin
        # The final norm and unembedding (decoders), plain modules sharing the backbone's weights.
        self.final_norm = _plain_component(backbone, mapping, "ln_final")
        self.unembed = _plain_component(backbone, mapping, "unembed")
        self._lock = threading.Lock()

    def __call__(
        self,
        acts: torch.Tensor,  # [batch, pos, d_model]: resid_post of block first_block - 1
        attention_mask: torch.Tensor,  # [batch, pos]
        hook_names: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return residual hooks of blocks >= first_block (default: the last block's output)."""
        bb = self.backbone
        hooks = list(hook_names or [resid_post(bb.n_layers - 1)])
        for hook in hooks:
            parsed = parse_resid(hook)
            if parsed is None or parsed.layer < self.first_block or not parsed.post:
                raise InvalidInputError(
                    f"A tail from block {self.first_block} serves resid_post hooks of blocks "
                    f">= {self.first_block}; got {hook!r}."
                )
        dtype = next(self.model.parameters()).dtype
        ids = torch.full(attention_mask.shape, bb.tokenizer.pad_token_id or 0, device=bb.device)
        with self._lock:
            self._inject.injected = acts.to(bb.device, dtype=dtype)
            try:
                bb.n_tail_passes += 1
                return bb._forward_plain(
                    ids, attention_mask.to(bb.device), hooks, self.model, self.layers
                )
            finally:
                self._inject.injected = None


def _plain_component(backbone: Backbone, mapping: dict[int, nn.Module], name: str) -> Any:
    component = getattr(backbone.bridge, name, None)
    if not isinstance(component, nn.Module):
        return None
    return mapping.get(id(backbone._original(component)))


class _Passthrough(nn.Module):
    """Stands in for a skipped block: passes its input on, or hands on injected activations."""

    def __init__(self, injected: torch.Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.injected = injected
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = hidden_states if self.injected is None else self.injected
        return (out,) if self.as_tuple else out


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(
            f"Device {device!r} was asked for but CUDA is not available here; use 'cpu'."
        )
    return device


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # The weight-loading progress bar of transformers is noise in CLI output and test logs.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
