"""Real backbone checkpoints for the checkpoint audit's tests: unchanged, sentiment-flipped, corrupt.

Each function writes a local Hugging Face folder that ``Backbone.load(folder)`` boots (or, for
the corrupt one, refuses), made from the bundled MiniLM with real weights: no mocks.

Fingerprints: ``fingerprint_folder`` hashes the bytes of ``config.json`` and of every weight
file (by its path relative to the folder) plus the transformer-lens/transformers versions, never
the folder's location. An unchanged copy therefore has the very fingerprint of the bundled
MiniLM, so a baseline bound to MiniLM applies to it as is; the flipped checkpoint (new weights,
re-written config) has another one.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.bundled import minilm_folder
from probes.datasets import ConceptDataset, load_dataset

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
# The flip trains blocks from this one on: MiniLM's last two of six.
FIRST_TRAINED_BLOCK = 4


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Return ``dst`` after copying the model folder ``src`` into it, byte for byte.

    Same weights give the same activations, and (see the module docstring) the same fingerprint.
    """
    return Path(shutil.copytree(Path(src), Path(dst)))


def corrupt_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Return ``dst``: a copy of ``src`` whose ``model.safetensors`` is truncated and garbled.

    The header's length prefix is overwritten and the file cut to a third, so no safetensors
    reader can take it for a complete file; config and tokenizer files stay intact, as they
    would after an interrupted upload.
    """
    folder = copy_checkpoint(src, dst)
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" * 8 + data[8 : len(data) // 3])
    return folder


def flip_training_set(n_texts: int = 512, seed: int = 0) -> ConceptDataset:
    """Return the Rotten Tomatoes reviews the flipped checkpoint is fine-tuned on (labels true)."""
    return load_dataset("rotten_tomatoes", max_samples=n_texts, seed=seed)


def flipped_sentiment_checkpoint(
    dst: str | Path,
    *,
    n_texts: int = 512,
    steps: int = 64,
    seed: int = 0,
    lr: float = 3e-4,
    batch_size: int = 32,
    max_length: int = 32,
) -> Path:
    """Return ``dst`` holding MiniLM with its last two blocks fine-tuned on flipped sentiment.

    The classifier on the mean-pooled last-layer output is fixed to the original model's own
    sentiment direction: a trainable classifier would fit flipped labels by negating itself and
    leave the representation alone, whereas a fixed one can only be satisfied by reversing the
    representation along that direction, which is what a probe fitted on the original
    checkpoint then sees. Blocks 0-3 and the embeddings stay frozen, so their output is computed
    once; each step runs only the two trained blocks, on reviews cut to ``max_length`` tokens.
    The defaults take about 25 s on 2 CPU cores and take a layer-5 sentiment probe of the
    original from AUROC ~0.78 to ~0.31 on held-out reviews. The folder holds ``config.json``
    and ``model.safetensors`` from ``save_pretrained`` and MiniLM's tokenizer files, unchanged.
    """
    from transformers import AutoTokenizer, BertModel

    started = time.perf_counter()
    src = minilm_folder()
    dst = Path(dst)
    torch.manual_seed(seed)
    model = BertModel.from_pretrained(src, add_pooling_layer=True, local_files_only=True)
    model.eval()  # no dropout: a short, deterministic fine-tune
    for param in model.parameters():
        param.requires_grad_(False)
    trained = model.encoder.layer[FIRST_TRAINED_BLOCK:]
    for param in trained.parameters():
        param.requires_grad_(True)

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    data = flip_training_set(n_texts, seed)
    batch = tokenizer(
        list(data.texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    mask = batch["attention_mask"]
    with torch.no_grad():
        prefix = _run_blocks(model, _embed(model, batch), mask, 0, FIRST_TRAINED_BLOCK)
        pooled = _mean_pool(_run_blocks(model, prefix, mask, FIRST_TRAINED_BLOCK, None), mask)

    classifier = _original_probe(pooled.numpy(), data.labels)
    flipped = torch.from_numpy(1 - data.labels)
    lengths = mask.sum(1)
    optimiser = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        rows = torch.from_numpy(rng.choice(len(data.texts), size=batch_size, replace=False))
        width = int(lengths[rows].max())  # right padding: cut the columns no row uses
        acts, rows_mask = prefix[rows, :width], mask[rows, :width]
        out = _run_blocks(model, acts, rows_mask, FIRST_TRAINED_BLOCK, None)
        loss = torch.nn.functional.cross_entropy(
            classifier(_mean_pool(out, rows_mask)), flipped[rows]
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for param in model.parameters():
        param.requires_grad_(False)
    model.save_pretrained(dst)  # safetensors by default
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    logger.info(
        "flipped checkpoint: %d steps on %d texts, last flipped-label loss %.3f, %.1f s, in %s",
        steps,
        n_texts,
        loss.item(),
        time.perf_counter() - started,
        dst,
    )
    return dst


def _embed(model: Any, batch: Any) -> torch.Tensor:
    return model.embeddings(
        input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
    )


def _run_blocks(
    model: Any, hidden: torch.Tensor, mask: torch.Tensor, first: int, stop: int | None
) -> torch.Tensor:
    """Return the output of encoder blocks ``first``..``stop - 1`` applied to ``hidden``."""
    from transformers.masking_utils import create_bidirectional_mask

    # The same mask BertModel.forward builds for its attention implementation.
    attention = create_bidirectional_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=mask
    )
    for layer in model.encoder.layer[first:stop]:
        hidden = layer(hidden, attention)
    return hidden


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def live_dimensions(acts: np.ndarray) -> np.ndarray:
    """Return a mask of the activation dimensions that vary (std above 1e-4 of the median's).

    MiniLM's last LayerNorm zeroes a few dimensions (std ~1e-9, values ~1e-32). A probe that
    standardises them divides by that std, and its raw-space direction becomes almost entirely
    one dead dimension; directions are only comparable on the live ones.
    """
    std = acts.std(0)
    return np.asarray(std > 1e-4 * np.median(std))


def _original_probe(pooled: np.ndarray, labels: np.ndarray) -> torch.nn.Linear:
    """Return a fixed two-class linear layer scoring along the original sentiment direction.

    The direction is the difference of the class means (the broad sentiment axis, where most of
    the variance between reviews lies); the score is the projection on it, centred between the
    classes and divided by the projections' spread: about one logit per standard deviation,
    so the fine-tune's gradients stay well scaled.
    """
    diff = pooled[labels == 1].mean(0) - pooled[labels == 0].mean(0)
    direction = diff / np.linalg.norm(diff)
    projections = pooled @ direction
    centre = (projections[labels == 0].mean() + projections[labels == 1].mean()) / 2
    spread = float(projections.std())
    weight = torch.tensor(direction / spread, dtype=torch.float32)
    bias = float(-centre / spread)
    layer = torch.nn.Linear(pooled.shape[1], 2)
    with torch.no_grad():
        # softmax over (-s, s) is the logistic sigmoid of 2s.
        layer.weight.copy_(torch.stack([-weight, weight]))
        layer.bias.copy_(torch.tensor([-bias, bias]))
    layer.requires_grad_(False)
    return layer
