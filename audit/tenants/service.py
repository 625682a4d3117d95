"""Tenant operations shared by the HTTP API and the CLI: corpora, training jobs, predictions.

``TenantService`` ties the registry (rows), the tenant's files (corpus JSONL, head folders), the
activation store (the frozen prefix computed once per corpus) and the inference engine (mixed
batches). A head becomes ``ready`` only after its files are written; a job that dies half-way
leaves a ``training`` row that ``Registry.recover_interrupted`` marks failed at the next start.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.storage_faults import storage_fault
from audit.tenants.heads import Head, HeadOutput, HeadSpec, save_head, train_head
from audit.tenants.registry import Corpus, HeadRecord, Job, NotFoundError, Registry
from audit.tenants.serving import InferenceEngine, registry_loader
from probes.atomic import atomic_write
from probes.backbone import Backbone
from probes.errors import InvalidInputError
from probes.store import ActivationStore, texts_hash

logger = logging.getLogger(__name__)

MAX_CORPUS_BYTES = 20 * 1024 * 1024
MAX_CORPUS_LINES = 50_000


class CorpusError(AuditError, InvalidInputError):
    """A submitted corpus that cannot be used; the message names the line and the fix."""


@dataclass(frozen=True)
class ParsedCorpus:
    """A corpus's texts and labels (None for plain-text corpora), and blank lines skipped."""

    texts: list[str]
    labels: list[Any] | None
    n_blank_lines: int

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(sorted({str(v) for v in self.labels})) if self.labels is not None else ()


def parse_corpus(
    data: bytes,
    *,
    labelled: bool = True,
    max_bytes: int = MAX_CORPUS_BYTES,
    max_lines: int = MAX_CORPUS_LINES,
) -> ParsedCorpus:
    """Return the rows of a JSONL corpus: ``{"text": str, "label": str|int|float|bool}`` per line.

    ``labelled=False`` accepts plain-text corpora (language-model heads): ``label`` is optional
    and ignored. Blank lines are skipped and counted; every other problem is an error naming the
    line and the fix.
    """
    if len(data) > max_bytes:
        raise CorpusError(
            f"The corpus is {len(data):,} bytes; the limit is {max_bytes:,}. Split it or "
            "subsample it."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(
            f"The corpus is not UTF-8 text: line {bad_line} holds byte 0x{data[exc.start]:02x}. "
            "Save it as UTF-8."
        ) from exc
    texts: list[str] = []
    labels: list[Any] = []
    blank = 0
    # Lines end at "\n" (with an optional "\r") only: str.splitlines() would also split inside
    # a JSON string holding U+2028, U+2029 or U+0085, which JSON allows unescaped.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        if len(texts) >= max_lines:
            raise CorpusError(f"The corpus has more than {max_lines:,} rows; split it.")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"Line {lineno}: not valid JSON ({exc.msg}).") from exc
        except RecursionError:
            raise CorpusError(
                f"Line {lineno}: the JSON is nested too deeply to read; give one flat "
                '{"text": ..., "label": ...} object per line.'
            ) from None
        if not isinstance(row, dict):
            raise CorpusError(f"Line {lineno}: expected a JSON object, got {type(row).__name__}.")
        value = row.get("text")
        if not isinstance(value, str) or not value.strip():
            raise CorpusError(
                f'Line {lineno}: "text" must be a non-empty string; got {_shown(value)}.'
            )
        _check_unicode(value, lineno, "text")
        texts.append(value)
        if not labelled:
            continue
        if "label" not in row:
            raise CorpusError(
                f'Line {lineno}: missing the "label" field. Every row of a labelled corpus '
                'needs one, e.g. {"text": "...", "label": "positive"}.'
            )
        label = row["label"]
        if isinstance(label, bool):
            label = int(label)
        if isinstance(label, str):
            label = label.strip()
        if label == "" or not isinstance(label, (str, int, float)):
            raise CorpusError(
                f'Line {lineno}: "label" must be a non-empty string or a number; got '
                f"{_shown(label)}."
            )
        if isinstance(label, str):
            _check_unicode(label, lineno, "label")
        labels.append(label)
    if not texts:
        raise CorpusError("The corpus has no rows; give one JSON object per line.")
    parsed = ParsedCorpus(texts, labels if labelled else None, blank)
    if labelled and len(parsed.label_names) < 2:
        raise CorpusError(
            f"Every row has the label {parsed.label_names[0]!r}; a head needs at least two "
            "labels (or numeric labels with task='regression')."
        )
    return parsed


def _shown(value: Any, limit: int = 80) -> str:
    """Return ``repr(value)``, cut to ``limit`` characters for an error message."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _check_unicode(value: str, lineno: int, field: str) -> None:
    """Raise a CorpusError if ``value`` holds a lone surrogate (no UTF-8 form to store)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CorpusError(
            f'Line {lineno}: "{field}" holds a lone UTF-16 surrogate at character {exc.start} '
            "(an unpaired \\ud800..\\udfff escape), which is not Unicode text. Escape "
            "surrogates only in high/low pairs, or write the character itself as UTF-8."
        ) from None


class TenantService:
    """Corpora, head training (in the background) and predictions for the registry's tenants."""

    def __init__(
        self,
        registry: Registry,
        backbone: Backbone,
        store: ActivationStore | None = None,
        *,
        engine: InferenceEngine | None = None,
        training_workers: int = 1,
        progress: bool = False,
    ) -> None:
        self.registry = registry
        self.backbone = backbone
        self.store = store if store is not None else ActivationStore()
        self.engine = engine or InferenceEngine(backbone, registry_loader(backbone, registry))
        self.progress = progress
        self._jobs = ThreadPoolExecutor(training_workers, thread_name_prefix="train")
        self._futures: dict[str, Future[HeadRecord]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.stop()
        self._jobs.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------- corpora
    def add_corpus(self, tenant_id: str, data: bytes, *, labelled: bool = True) -> Corpus:
        """Return the stored corpus made from JSONL ``data`` (validated, written atomically)."""
        return self.store_corpus(tenant_id, parse_corpus(data, labelled=labelled))

    def store_corpus(self, tenant_id: str, parsed: ParsedCorpus) -> Corpus:
        """Return the stored corpus holding an already parsed one (written atomically)."""
        if self.registry.get_tenant(tenant_id) is None:
            raise NotFoundError(f"No tenant {tenant_id!r}.")
        folder = self.registry.tenant_dir(tenant_id) / "corpora"
        digest = texts_hash(parsed.texts)
        rows = [
            {"text": t} if parsed.labels is None else {"text": t, "label": y}
            for t, y in zip(parsed.texts, parsed.labels or [None] * len(parsed.texts), strict=True)
        ]
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        # One file per upload: deleting one corpus never removes another's identical texts.
        path = folder / f"{digest[:12]}-{secrets.token_hex(4)}.jsonl"
        atomic_write(path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
        return self.registry.add_corpus(
            tenant_id,
            n_lines=len(parsed.texts),
            label_names=parsed.label_names,
            texts_hash=digest,
            path=str(path),
        )

    def read_corpus(self, tenant_id: str, corpus_id: str) -> ParsedCorpus:
        """Return the rows of a tenant's stored corpus."""
        corpus = self.registry.get_corpus(tenant_id, corpus_id)
        if corpus is None:
            raise NotFoundError(f"No corpus {corpus_id!r} for this tenant.")
        data = Path(corpus.path).read_bytes()
        return parse_corpus(data, labelled=bool(corpus.label_names), max_bytes=len(data) + 1)

    # ---------------------------------------------------------------- training
    def submit_training(
        self, tenant_id: str, corpus_id: str, spec: HeadSpec
    ) -> tuple[HeadRecord, Job]:
        """Return the new head row and its job; training runs in the background."""
        corpus = self.registry.get_corpus(tenant_id, corpus_id)
        if corpus is None:
            raise NotFoundError(f"No corpus {corpus_id!r} for this tenant.")
        spec = spec.resolved(self.backbone)  # bad specs fail now, not in the job
        if spec.task != "lm" and not corpus.label_names:
            raise InvalidInputError(
                f"Corpus {corpus_id} has no labels; a {spec.task} head needs labelled rows "
                "(or use kind='blocks', task='lm' on a decoder backbone)."
            )
        record = self.registry.add_head(tenant_id, corpus_id=corpus_id, kind=spec.kind)
        job = self.registry.create_job(tenant_id, record.head_id)
        future = self._jobs.submit(self._run_job, job.job_id, record, spec)
        with self._lock:
            self._futures[job.job_id] = future
        return record, job

    def train(self, tenant_id: str, corpus_id: str, spec: HeadSpec) -> HeadRecord:
        """Return the ready head after training it now (the CLI's synchronous path)."""
        _, job = self.submit_training(tenant_id, corpus_id, spec)
        return self.wait(job.job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> HeadRecord:
        """Return the head of job ``job_id`` once it finished; re-raise its error if it failed."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is None:
            raise NotFoundError(f"No running job {job_id!r} in this process.")
        return future.result(timeout=timeout)

    def _run_job(self, job_id: str, record: HeadRecord, spec: HeadSpec) -> HeadRecord:
        reg = self.registry
        try:
            reg.update_job(job_id, status="running", progress=0.0)
            corpus = self.read_corpus(record.tenant_id, record.corpus_id)

            def on_epoch(epoch: int, n_epochs: int, metrics: dict[str, Any]) -> None:
                reg.update_job(job_id, progress=epoch / n_epochs, metrics=public_metrics(metrics))

            head = train_head(
                self.backbone,
                self.store,
                corpus.texts,
                corpus.labels,
                spec,
                tenant_id=record.tenant_id,
                head_id=record.head_id,
                corpus_id=record.corpus_id,
                progress=self.progress,
                on_epoch=on_epoch,
            )
            folder = reg.tenant_dir(record.tenant_id) / "heads" / record.head_id
            save_head(head, folder)
            meta = json.loads(head.meta.model_dump_json())
            ready = reg.mark_head_ready(record.head_id, path=str(folder), meta=meta)
            reg.update_job(
                job_id, status="done", progress=1.0, metrics=public_metrics(meta["metrics"])
            )
            return ready
        except Exception as exc:
            logger.warning("training job %s failed: %s", job_id, exc)
            fault = storage_fault(exc)
            message = fault.message() if fault is not None else str(exc) or type(exc).__name__
            try:
                reg.mark_head_failed(record.head_id, message)
                reg.update_job(job_id, status="failed", error=message)
            except NotFoundError:  # the tenant or head was deleted while it trained
                pass
            raise

    # ------------------------------------------------------------- predictions
    def head(self, tenant_id: str, head_id: str) -> Head:
        """Return a tenant's ready head, loaded (or from the cache)."""
        self._ready_record(tenant_id, head_id)
        return self.engine.cache.get(head_id)

    def _ready_record(self, tenant_id: str, head_id: str) -> HeadRecord:
        record = self.registry.get_head(tenant_id, head_id)
        if record is None:
            raise NotFoundError(f"No head {head_id!r} for this tenant.")
        if record.status != "ready":
            raise InvalidInputError(
                f"Head {head_id} is {record.status}, not ready; see its job for progress."
            )
        return record

    def submit_predict(
        self, tenant_id: str, head_id: str, texts: Sequence[str], *, screener: Any = None
    ) -> Future[list[HeadOutput]]:
        """Return a Future of the head's outputs; the request joins the next mixed batch.

        With a ``screener``, each text's first window is scored from the same forward (the
        Future's ``windows`` attribute; see ``InferenceEngine.submit``).
        """
        self._ready_record(tenant_id, head_id)
        return self.engine.submit(head_id, texts, screener=screener)

    def predict(self, tenant_id: str, head_id: str, texts: Sequence[str]) -> list[HeadOutput]:
        """Return the outputs of a tenant's head on ``texts``."""
        return self.submit_predict(tenant_id, head_id, texts).result()

    def delete_head(self, tenant_id: str, head_id: str) -> bool:
        """Delete a tenant's head (row and files) and drop it from the cache."""
        self.engine.cache.evict(head_id)
        return self.registry.delete_head(tenant_id, head_id)

    def delete_corpus(self, tenant_id: str, corpus_id: str) -> bool:
        """Delete a tenant's corpus (row, file, stored activations); heads trained on it stay."""
        corpus = self.registry.get_corpus(tenant_id, corpus_id)
        if corpus is None or not self.registry.delete_corpus(tenant_id, corpus_id):
            return False
        self._erase_activations([corpus.texts_hash])
        return True

    def delete_tenant(self, tenant_id: str) -> bool:
        """Delete a tenant with its keys, corpora, heads, files and stored activations."""
        for record in self.registry.list_heads(tenant_id):
            self.engine.cache.evict(record.head_id)
        hashes = [c.texts_hash for c in self.registry.list_corpora(tenant_id)]
        deleted = self.registry.delete_tenant(tenant_id)
        self._erase_activations(hashes)
        return deleted

    def _erase_activations(self, hashes: Sequence[str]) -> None:
        """Remove the store's activations of texts that no remaining corpus holds.

        Activations are derived from the tenant's texts (and partly invertible), so they go
        with them; the store's layout is ``<fingerprint>/<texts hash[:32]>/``.
        """
        still_used = {
            c.texts_hash
            for t in self.registry.list_tenants()
            for c in self.registry.list_corpora(t.tenant_id)
        }
        for digest in set(hashes) - still_used:
            for folder in self.store.root.glob(f"*/{digest[:32]}"):
                shutil.rmtree(folder, ignore_errors=True)


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return metrics without the per-epoch history (kept in the head's own metadata)."""
    return {k: v for k, v in metrics.items() if k != "history"}


def spec_from_dict(values: dict[str, Any]) -> HeadSpec:
    """Return a HeadSpec from request fields, refusing unknown ones by name."""
    known = set(asdict(HeadSpec()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(
            f"Unknown head field(s) {unknown}. Known fields: {', '.join(sorted(known))}."
        )
    try:
        return HeadSpec(**values)
    except TypeError as exc:
        raise InvalidInputError(f"Bad head fields: {exc}.") from exc
