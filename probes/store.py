"""On-disk activation store: computed once per (backbone fingerprint, texts, hook, pooling), reused.

Layout under the store root::

    <fingerprint>/<texts hash>/<hook>.<pooling>.len<max_length>.safetensors   the tensors
    <fingerprint>/<texts hash>/<hook>.<pooling>.len<max_length>.json          metadata + sha256

Writes are atomic (temporary file, then rename; tensors first, metadata last), so a crash leaves
either a complete shard or one without metadata, which reads as absent. A shard whose checksum,
shape or metadata does not match is logged, deleted and recomputed, never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from probes.atomic import atomic_write, sha256_file
from probes.backbone import Backbone, Extraction, RaggedTokens
from probes.errors import CorruptArtifactError, InvalidInputError
from probes.home import audit_home
from probes.pooling import TOKENS, check_pooling

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def texts_hash(texts: Sequence[str]) -> str:
    """Return the sha256 hex digest of a list of texts (order-sensitive, length-prefixed)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardKey:
    """What a shard holds: whose activations, of which texts, at which hook, pooled how."""

    fingerprint: str
    texts_hash: str
    hook_name: str
    pooling: str
    max_length: int

    @property
    def relpath(self) -> Path:
        return (
            Path(self.fingerprint)
            / self.texts_hash[:32]
            / (f"{self.hook_name}.{self.pooling}.len{self.max_length}")
        )


@dataclass(frozen=True)
class ShardInfo:
    """One stored shard as listed by ``ActivationStore.list``."""

    key: ShardKey
    n_texts: int
    n_bytes: int
    created_at: str
    backbone: str
    dataset: str | None


class ActivationStore:
    """Activations on disk, keyed by backbone fingerprint x texts hash x hook x pooling."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else audit_home() / "store"
        self.n_recomputed_corrupt = 0

    # ------------------------------------------------------------ shard I/O
    def _paths(self, key: ShardKey) -> tuple[Path, Path]:
        base = self.root / key.relpath
        return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")

    def load(self, key: ShardKey, n_texts: int) -> np.ndarray | RaggedTokens | None:
        """Return a stored shard, or None if absent; a corrupt or stale one is deleted first."""
        data_path, meta_path = self._paths(key)
        if not meta_path.exists() or not data_path.exists():
            return None
        try:
            return self._read_checked(key, data_path, meta_path, n_texts)
        except CorruptArtifactError as exc:
            logger.warning("activation shard %s is unusable (%s); recomputing it", data_path, exc)
            self.n_recomputed_corrupt += 1
            data_path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return None

    def _read_checked(
        self, key: ShardKey, data_path: Path, meta_path: Path, n_texts: int
    ) -> np.ndarray | RaggedTokens:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptArtifactError(f"metadata unreadable: {exc}") from exc
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise CorruptArtifactError(f"schema_version {meta.get('schema_version')} is stale")
        expected_key = {
            "fingerprint": key.fingerprint,
            "texts_hash": key.texts_hash,
            "hook_name": key.hook_name,
            "pooling": key.pooling,
            "max_length": key.max_length,
        }
        if meta.get("key") != expected_key:
            raise CorruptArtifactError("metadata key does not match the shard's place")
        if data_path.stat().st_size != meta.get("n_bytes") or sha256_file(data_path) != meta.get(
            "sha256"
        ):
            raise CorruptArtifactError("checksum mismatch (truncated or altered file)")
        try:
            tensors = load_file(str(data_path))
        except Exception as exc:  # safetensors raises its own error types
            raise CorruptArtifactError(f"unreadable safetensors file: {exc}") from exc
        if key.pooling == TOKENS:
            values, offsets = tensors.get("values"), tensors.get("offsets")
            if values is None or offsets is None or len(offsets) != n_texts + 1:
                raise CorruptArtifactError("per-token shard has the wrong layout")
            if int(offsets[-1]) != len(values):
                raise CorruptArtifactError("per-token offsets do not cover the values")
            return RaggedTokens(values, offsets)
        values = tensors.get("values")
        if values is None or values.ndim != 2 or len(values) != n_texts:
            raise CorruptArtifactError(f"expected {n_texts} rows")
        return values

    def save(
        self, key: ShardKey, value: np.ndarray | RaggedTokens, extra: dict[str, Any] | None = None
    ) -> Path:
        """Write a shard atomically and return its tensor file's path."""
        data_path, meta_path = self._paths(key)
        if isinstance(value, RaggedTokens):
            tensors = {"values": np.ascontiguousarray(value.values), "offsets": value.offsets}
            n_texts = len(value)
        else:
            tensors = {"values": np.ascontiguousarray(value, dtype=np.float32)}
            n_texts = len(value)
        atomic_write(data_path, lambda tmp: save_file(tensors, tmp))
        meta = {
            "schema_version": SCHEMA_VERSION,
            "key": {
                "fingerprint": key.fingerprint,
                "texts_hash": key.texts_hash,
                "hook_name": key.hook_name,
                "pooling": key.pooling,
                "max_length": key.max_length,
            },
            "n_texts": n_texts,
            "n_bytes": data_path.stat().st_size,
            "sha256": sha256_file(data_path),
            "created_at": datetime.now(UTC).isoformat(),
            **(extra or {}),
        }
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
        return data_path

    # ------------------------------------------------------------ get or compute
    def get(
        self,
        backbone: Backbone,
        texts: Sequence[str],
        hook_names: Sequence[str] | None = None,
        poolings: Sequence[str] = ("mean",),
        *,
        batch_size: int = 32,
        progress: bool = True,
        dataset_name: str | None = None,
    ) -> Extraction:
        """Return the activations of ``texts``, reading stored shards and computing only the rest.

        Everything missing is computed in one extraction pass (stopping at the deepest missing
        layer) and stored; asking again runs no forward pass at all.
        """
        from probes.datasets import validate_texts

        texts = validate_texts(texts)
        hooks = list(hook_names or backbone.resid_hooks())
        poolings = [check_pooling(p) for p in poolings]
        digest = texts_hash(texts)
        result = Extraction()
        missing: list[tuple[str, str]] = []
        for hook in hooks:
            for pooling in poolings:
                key = ShardKey(backbone.fingerprint, digest, hook, pooling, backbone.max_length)
                stored = self.load(key, len(texts))
                if stored is None:
                    missing.append((hook, pooling))
                elif isinstance(stored, RaggedTokens):
                    result.tokens[hook] = stored
                else:
                    result.pooled[(hook, pooling)] = stored
        stats_key = ShardKey(backbone.fingerprint, digest, "_tokens", "stats", backbone.max_length)
        stats = self.load(stats_key, len(texts))
        if missing:
            missing_hooks = sorted({h for h, _ in missing}, key=hooks.index)
            missing_poolings = sorted({p for _, p in missing}, key=poolings.index)
            fresh = backbone.extract(
                texts, missing_hooks, missing_poolings, batch_size=batch_size, progress=progress
            )
            extra = {"backbone": backbone.name, "dataset": dataset_name}
            for hook, pooling in missing:
                key = ShardKey(backbone.fingerprint, digest, hook, pooling, backbone.max_length)
                if pooling == TOKENS:
                    result.tokens[hook] = fresh.tokens[hook]
                    self.save(key, fresh.tokens[hook], extra)
                else:
                    result.pooled[(hook, pooling)] = fresh.pooled[(hook, pooling)]
                    self.save(key, fresh.pooled[(hook, pooling)], extra)
            result.n_tokens, result.truncated = fresh.n_tokens, fresh.truncated
            if stats is None:
                table = np.stack([fresh.n_tokens, fresh.truncated.astype(np.int64)], axis=1)
                self.save(stats_key, table.astype(np.float32), extra)
        elif stats is not None and not isinstance(stats, RaggedTokens):
            result.n_tokens = stats[:, 0].astype(np.int64)
            result.truncated = stats[:, 1].astype(bool)
        else:  # shards from a store without token statistics: tokenising is cheap
            batch = backbone.tokenize(texts)
            result.n_tokens, result.truncated = batch.lengths, batch.truncated
        return result

    # ------------------------------------------------------------ listing and pruning
    def list(self) -> list[ShardInfo]:
        """Return every complete shard in the store, newest first."""
        shards: list[ShardInfo] = []
        if not self.root.exists():
            return shards
        for meta_path in self.root.rglob("*.json"):
            try:
                meta = json.loads(meta_path.read_text())
                key = ShardKey(**meta["key"])
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                continue
            data_path = meta_path.with_suffix(".safetensors")
            size = data_path.stat().st_size if data_path.exists() else 0
            shards.append(
                ShardInfo(
                    key=key,
                    n_texts=int(meta.get("n_texts", 0)),
                    n_bytes=size + meta_path.stat().st_size,
                    created_at=str(meta.get("created_at", "")),
                    backbone=str(meta.get("backbone", "")),
                    dataset=meta.get("dataset"),
                )
            )
        return sorted(shards, key=lambda s: s.created_at, reverse=True)

    def prune(
        self,
        *,
        fingerprint: str | None = None,
        older_than_days: float | None = None,
        everything: bool = False,
    ) -> tuple[int, int]:
        """Delete shards matching the filters; return (shards deleted, bytes freed).

        Leftover temporary files from interrupted writes are always removed.
        """
        if fingerprint is None and older_than_days is None and not everything:
            raise InvalidInputError(
                "prune needs a filter: a fingerprint, an age in days, or everything=True."
            )
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        n_deleted = n_bytes = 0
        for shard in self.list():
            if fingerprint is not None and shard.key.fingerprint != fingerprint:
                continue
            data_path, meta_path = self._paths(shard.key)
            if cutoff is not None and meta_path.stat().st_mtime > cutoff:
                continue
            n_bytes += shard.n_bytes
            n_deleted += 1
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
        if self.root.exists():
            for tmp in self.root.rglob(".*.tmp"):
                n_bytes += tmp.stat().st_size
                tmp.unlink(missing_ok=True)
            for folder in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    shutil.rmtree(folder, ignore_errors=True)
        return n_deleted, n_bytes
