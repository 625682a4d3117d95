"""Tenants page: tenants, their corpora and heads, each head's concept reliance, head training.

Everything shown is read from the tenant registry under AUDIT_HOME and the heads' own folders;
training and the reliance audit run through the library (``TenantService``, ``audit_and_save``),
exactly as ``audit tenant train`` and ``audit tenant audit`` do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import streamlit as st

from app_pages.common import current_backbone, friendly_errors
from audit.errors import AuditError
from audit.tenants import HEAD_KINDS, HeadSpec, Registry, TenantService, parse_corpus
from audit.tenants.heads import TASKS
from audit.tenants.registry import REGISTRY_FILENAME, HeadRecord, NewTenant
from audit.tenants.reliance import (
    DEFAULT_CONCEPTS,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MAX_TEXTS,
    DEFAULT_N_CONTROLS,
    METHODS,
    SCORE_DEFINITION,
)
from audit.tenants.reliance_plot import reliance_figure
from audit.tenants.reliance_store import (
    RelianceSettings,
    StoredReliance,
    audit_and_save,
    load_reliance,
)
from audit.tenants.service import public_metrics
from probes.backbone import Backbone
from probes.datasets import CONCEPTS
from probes.errors import ProbesError
from probes.home import audit_home
from probes.store import ActivationStore

TENANT_KEY = "tenant_choice"  # st.session_state keys of the tenant and head select boxes
HEAD_KEY = "head_choice"
NEW_KEY = "new_tenant"  # the tenant just created, its key shown on the next run only
TRAINED_KEY = "trained_head"  # the message about the head just trained, shown once
POLL_SECONDS = 0.2  # how often the training progress bar rereads the job's row
EXAMPLE_ROW = '{"text": "what a lovely day", "label": "positive"}'


@st.cache_resource(show_spinner=False)
def open_registry(path: str) -> Registry:
    """Return the tenant registry at ``path``, opened once per server process (thread-safe)."""
    return Registry(path)


def head_row(record: HeadRecord) -> dict[str, Any]:
    """Return one heads-table row: the registry's fields and the head's validation metrics."""
    meta = record.meta
    metrics = public_metrics(meta.get("metrics", {}))
    fingerprint = meta.get("backbone_fingerprint")
    return {
        "head": record.head_id,
        "kind": record.kind,
        "task": meta.get("task"),
        "layer": meta.get("layer"),
        "status": record.status,
        **{name: metrics[name] for name in sorted(metrics, key=lambda n: (n[:4] != "val_", n))},
        "backbone fingerprint": fingerprint[:12] if fingerprint else None,
        "corpus": record.corpus_id,
        "created": record.created_at[:19],
        "error": meta.get("error"),
    }


def metrics_line(metrics: dict[str, Any]) -> str:
    """Return the validation metrics a head reports, as "val_accuracy 0.950, val_loss 0.210"."""
    return ", ".join(
        f"{name} {metrics[name]:.3f}"
        for name in ("val_accuracy", "val_auroc", "val_rmse", "val_r2", "val_loss")
        if isinstance(metrics.get(name), float)
    )


def create_tenant_form(expanded: bool) -> str | None:
    """Show the form that creates a tenant; return the name once "Create tenant" is pressed."""
    with (
        st.expander("Create a tenant", expanded=expanded),
        st.form("create-tenant", clear_on_submit=True),
    ):
        name = st.text_input("Tenant name", placeholder="acme-research")
        submitted = st.form_submit_button("Create tenant")
    return name if submitted else None


def create_tenant(registry: Registry, name: str) -> None:
    """Create the tenant and rerun the page, which then shows its API key this once."""
    with friendly_errors("Creating the tenant"):
        new = registry.create_tenant(name)
    st.session_state[TENANT_KEY] = new.tenant.tenant_id
    st.session_state[NEW_KEY] = new
    st.rerun()


def show_new_tenant_key() -> None:
    """Show the API key of the tenant just created, on this one run only."""
    new: NewTenant | None = st.session_state.pop(NEW_KEY, None)
    if new is None:
        return
    st.success(f"Created tenant {new.tenant.name!r} ({new.tenant.tenant_id}). Its API key:")
    st.code(new.api_key, language=None)
    st.warning(
        "The key is shown only once: the registry keeps only its hash. Copy it now; if it is "
        f"lost, issue a new one with `audit tenant rotate-key {new.tenant.tenant_id}`."
    )


class TrainRequest(NamedTuple):
    """A submitted training form: the corpus's bytes and the head asked for."""

    data: bytes
    spec: HeadSpec


def train_form() -> TrainRequest | None:
    """Show the training form; return the corpus and spec once "Train head" is pressed."""
    st.subheader("Train a head")
    done = st.session_state.pop(TRAINED_KEY, None)
    if done is not None:
        st.success(done)
    with st.form("train-head"):
        uploaded = st.file_uploader(
            "Corpus (JSONL, one object per line)", type=["jsonl", "json", "txt"]
        )
        pasted = st.text_area(
            "...or paste it here",
            placeholder=f"{EXAMPLE_ROW}\n" + EXAMPLE_ROW.replace("lovely", "dreadful"),
            help='One {"text": ..., "label": ...} object per line, as `audit tenant train` reads.',
        )
        kind_col, task_col, layer_col, k_col, epochs_col = st.columns(5)
        kind = kind_col.selectbox("Kind", HEAD_KINDS)
        task = task_col.selectbox("Task", TASKS)
        layer = layer_col.number_input(
            "Layer (linear, mlp; -1: last)", min_value=-1, value=-1, step=1
        )
        k = k_col.number_input("Blocks copied (blocks)", min_value=1, value=2, step=1)
        epochs = epochs_col.number_input("Most epochs", min_value=1, value=30, step=1)
        submitted = st.form_submit_button("Train head")
    if not submitted:
        return None
    if uploaded is not None:
        data = uploaded.getvalue()
    elif pasted.strip():
        data = pasted.encode("utf-8")
    else:
        st.error(f"Give a corpus: upload a JSONL file or paste one {EXAMPLE_ROW} per line.")
        return None
    spec = HeadSpec(
        kind=kind,
        task=task,
        layer=None if layer < 0 or kind == "blocks" else int(layer),
        k=int(k),
        epochs=int(epochs),
    )
    return TrainRequest(data, spec)


def train_with_progress(
    service: TenantService, tenant_id: str, corpus_id: str, spec: HeadSpec
) -> HeadRecord:
    """Return the ready head, showing the job's progress as the training thread records it."""
    record, job = service.submit_training(tenant_id, corpus_id, spec)
    bar = st.progress(0.0, text=f"Head {record.head_id}: reading the corpus's activations...")
    while True:
        try:
            ready = service.wait(job.job_id, timeout=POLL_SECONDS)
        except TimeoutError:
            current = service.registry.get_job(tenant_id, job.job_id)
            if current is not None and "epoch" in current.metrics:
                bar.progress(
                    current.progress,
                    text=(
                        f"Head {record.head_id}: epoch {current.metrics['epoch']} of at most "
                        f"{spec.epochs}, {metrics_line(current.metrics)}"
                    ),
                )
            continue
        bar.progress(1.0, text=f"Head {record.head_id}: trained")
        return ready


def train(registry: Registry, tenant_id: str, request: TrainRequest) -> None:
    """Store the corpus, train the head and rerun the page, which then lists it as ready."""
    with friendly_errors("Reading the corpus"):
        parsed = parse_corpus(request.data, labelled=request.spec.task != "lm")
    backbone = current_backbone()
    if backbone is None:
        return
    with friendly_errors("Training the head"):
        request.spec.resolved(backbone)  # a bad spec fails before the corpus is stored
        service = TenantService(registry, backbone, ActivationStore())
        try:
            corpus = service.store_corpus(tenant_id, parsed)
            ready = train_with_progress(service, tenant_id, corpus.corpus_id, request.spec)
        finally:
            service.close()
    metrics = public_metrics(ready.meta.get("metrics", {}))
    st.session_state[HEAD_KEY] = ready.head_id
    st.session_state[TRAINED_KEY] = (
        f"Head {ready.head_id} is ready ({ready.kind} on {ready.meta.get('input_hook')}, "
        f"corpus {corpus.corpus_id}, {corpus.n_lines} rows): {metrics_line(metrics)}; best "
        f"epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}."
    )
    st.rerun()


def show_reliance(stored: StoredReliance) -> None:
    """Show a stored reliance report: the bar chart, its settings and the per-concept table."""
    report, settings = stored.report, stored.settings
    st.plotly_chart(reliance_figure(report), key=f"reliance-{report.head_id}")
    st.caption(
        f"{report.summary_line()}. Audited {stored.saved_at} with {report.method} erasure on "
        f"{report.n_texts} of the head's texts, {settings.max_samples} rows per concept "
        f"dataset, {report.n_controls} random control(s); backbone "
        f"{report.backbone_fingerprint[:12]}."
    )
    st.dataframe([s.as_dict() for s in (*report.concepts, report.control)], hide_index=True)
    st.caption(f"score: {SCORE_DEFINITION}.")
    for note in report.notes:
        st.caption(f"Note: {note}.")


def reliance_settings() -> RelianceSettings | None:
    """Show the audit settings form; return them when "Audit concept reliance" is pressed."""
    with st.form("reliance-settings"):
        concepts = st.multiselect("Concepts", list(CONCEPTS), default=list(DEFAULT_CONCEPTS))
        method_col, samples_col, texts_col, controls_col = st.columns(4)
        method = method_col.selectbox("Erasure", METHODS)
        max_samples = samples_col.number_input(
            "Rows per concept dataset", min_value=20, value=DEFAULT_MAX_SAMPLES, step=10
        )
        max_texts = texts_col.number_input(
            "Head texts audited (most)", min_value=2, value=DEFAULT_MAX_TEXTS, step=10
        )
        n_controls = controls_col.number_input(
            "Random controls", min_value=1, value=DEFAULT_N_CONTROLS, step=1
        )
        pressed = st.form_submit_button("Audit concept reliance")
    if not pressed:
        return None
    if not concepts:
        st.error("Choose at least one concept to audit.")
        return None
    return RelianceSettings(
        concepts=tuple(concepts),
        method=method,
        max_texts=int(max_texts),
        max_samples=int(max_samples),
        n_controls=int(n_controls),
    )


def run_audit(registry: Registry, record: HeadRecord, settings: RelianceSettings) -> None:
    """Audit the head, store the report with it and rerun the page, which then draws it."""
    backbone = current_backbone()
    if backbone is None or not same_backbone(record, backbone):
        return
    with (
        st.spinner(
            "Auditing: fitting each concept's directions on its bundled datasets and erasing "
            "them from the head's input..."
        ),
        friendly_errors("Auditing concept reliance"),
    ):
        service = TenantService(registry, backbone, ActivationStore())
        try:
            audit_and_save(service, record.tenant_id, record.head_id, settings)
        finally:
            service.close()
    st.rerun()


def reliance_view(record: HeadRecord) -> RelianceSettings | None:
    """Show the head's stored reliance report; return audit settings once an audit is asked."""
    st.subheader(f"Concept reliance of head {record.head_id}")
    stored: StoredReliance | None = None
    try:
        stored = load_reliance(record.path) if record.path else None
    except (AuditError, ProbesError, OSError) as exc:
        st.error(f"Reading the stored reliance report failed: {exc}")
    else:
        if stored is None:
            st.info(
                f"Head {record.head_id} has not been audited yet. Choose the concepts below and "
                "press Audit concept reliance: each concept is erased from the head's input and "
                "the change in its outputs is compared with random directions (the same audit "
                "as `audit tenant audit`). The result is stored with the head."
            )
        else:
            show_reliance(stored)
    return reliance_settings()


def same_backbone(record: HeadRecord, backbone: Backbone) -> bool:
    """Return whether the session's backbone is the head's, after explaining if it is not."""
    fingerprint = record.meta.get("backbone_fingerprint")
    if fingerprint == backbone.fingerprint:
        return True
    st.error(
        f"Head {record.head_id} was trained on backbone {record.meta.get('backbone_name')} "
        f"({str(fingerprint)[:12]}), not on the session's {backbone.name} "
        f"({backbone.fingerprint[:12]}). Switch to its backbone on the Backbone page to audit it."
    )
    return False


def tenant_overview(registry: Registry, tenant_id: str) -> HeadRecord | None:
    """Show the tenant's corpora and heads; return the ready head chosen for the reliance view."""
    corpora = registry.list_corpora(tenant_id)
    st.subheader("Corpora")
    if corpora:
        st.dataframe(
            [
                {
                    "corpus": c.corpus_id,
                    "lines": c.n_lines,
                    "labels": ", ".join(c.label_names) or "(plain text)",
                    "created": c.created_at[:19],
                }
                for c in corpora
            ],
            hide_index=True,
        )
    else:
        st.info("No corpora yet: a corpus is stored when a head is trained on it (below).")
    heads = registry.list_heads(tenant_id)
    st.subheader("Heads")
    if not heads:
        st.info("No heads yet: train one below from an uploaded or pasted corpus.")
        return None
    st.dataframe([head_row(h) for h in heads], hide_index=True)
    ready = {h.head_id: h for h in heads if h.status == "ready"}
    if not ready:
        st.info("No head is ready yet: the concept-reliance bars need a trained head.")
        return None
    if st.session_state.get(HEAD_KEY) not in ready:
        st.session_state[HEAD_KEY] = next(iter(ready))
    chosen = st.selectbox(
        "Head for the concept-reliance view",
        list(ready),
        key=HEAD_KEY,
        format_func=lambda h: f"{h} ({ready[h].kind}, {ready[h].meta.get('task')})",
    )
    return ready[chosen]


st.title("Tenants")
with friendly_errors("Opening the tenant registry"):
    registry = open_registry(str(audit_home() / REGISTRY_FILENAME))
    tenants = registry.list_tenants()
show_new_tenant_key()
if not tenants:
    st.info(
        f"No tenants yet in the registry {registry.path}. Create one below (or with "
        "`audit tenant create NAME`); it gets an API key and can then train heads."
    )
create_area = st.container()
with create_area:
    new_name = create_tenant_form(expanded=not tenants)
# Every section is drawn before any action runs: an action's error (st.error, then st.stop)
# leaves the rest of the page in place, and a success reruns the page to read the stores again.
train_request: TrainRequest | None = None
audit_settings: RelianceSettings | None = None
if tenants:
    st.dataframe(
        [
            {
                "tenant": t.tenant_id,
                "name": t.name,
                "created": t.created_at[:19],
                "heads": registry.count_heads(t.tenant_id),
                "exports allowed": t.export_allowed,
            }
            for t in tenants
        ],
        hide_index=True,
    )
    names = {t.tenant_id: t.name for t in tenants}
    if st.session_state.get(TENANT_KEY) not in names:
        st.session_state[TENANT_KEY] = tenants[0].tenant_id
    tenant_id = st.selectbox(
        "Tenant", list(names), key=TENANT_KEY, format_func=lambda t: f"{names[t]} ({t})"
    )
    chosen = tenant_overview(registry, tenant_id)
    reliance_area = st.container()
    if chosen is not None:
        with reliance_area:
            audit_settings = reliance_view(chosen)
    train_area = st.container()
    with train_area:
        train_request = train_form()
    if train_request is not None:
        with train_area:
            train(registry, tenant_id, train_request)
    if audit_settings is not None and chosen is not None:
        with reliance_area:
            run_audit(registry, chosen, audit_settings)
if new_name is not None:
    with create_area:
        create_tenant(registry, new_name)
