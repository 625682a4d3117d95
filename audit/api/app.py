"""The FastAPI app: state under AUDIT_HOME, one backbone, one inference engine, every route."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from audit.api import export, head_routes, log_routes, screen_routes, tenant_routes
from audit.api.errors import CatchAllMiddleware, install_error_handlers
from audit.api.limits import BodyLimitMiddleware, RateLimiter
from audit.api.models import BackboneInfo, Health, QueueStats
from audit.api.settings import ApiSettings
from audit.api.state import ApiState, get_state, key_digest
from audit.screening.catalog import latest_bank, load_or_fit_bank
from audit.screening.gate import ScreeningGate
from audit.screening.log import AuditLog, SQLiteAuditLog, load_or_create_key
from audit.screening.screener import Screener
from audit.screening.screens import ScreenBank
from audit.tenants.registry import REGISTRY_FILENAME, Registry
from audit.tenants.service import TenantService
from audit.tenants.serving import InferenceEngine, registry_loader
from probes.backbone import Backbone
from probes.home import audit_home
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

ADMIN_KEY_ENV = "AUDIT_ADMIN_KEY"
DEFAULT_BACKBONE = "minilm"


def _package_version() -> str:
    try:
        return version("alignment-audit")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0"


def create_app(
    *,
    home: Path | None = None,
    backbone: Backbone | None = None,
    admin_key: str | None = None,
    settings: ApiSettings | None = None,
    screening: bool = True,
    bank: ScreenBank | None = None,
    screens_version: str | None = None,
    retain_text: bool = False,
    database_url: str | None = None,
) -> FastAPI:
    """Return the HTTP API app; its lifespan opens the registry, recovers jobs, starts the engine.

    ``home`` defaults to AUDIT_HOME (or the user data folder), ``backbone`` to the bundled
    MiniLM (loaded once, at startup), ``admin_key`` to the AUDIT_ADMIN_KEY environment variable:
    without one the owner routes answer 503. With ``screening`` (the default) every request is
    screened by ``bank`` (default: the backbone's latest fitted bank, or ``screens_version``;
    the default screens are fitted on first start) and each decision goes to the audit log
    under ``<home>/screening/``; ``retain_text`` keeps request texts in the log.

    ``database_url`` (``postgresql://...``) puts the registry and the audit log in that
    PostgreSQL database, so that several replicas share them: start each replica with the same
    URL and the same ``home`` (shared by filesystem: tenants' corpora and heads, the activation
    store and the screen banks stay there, and so does the log's key, ``screening/log.key``,
    unless AUDIT_LOG_KEY is set).
    """
    settings = settings or ApiSettings()
    key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV)
    admin_digest = key_digest(key) if key else None
    del key  # only the digest is kept, and neither is ever logged

    def _open_gate(
        root: Path,
        model: Backbone,
        store: ActivationStore,
        settings: ApiSettings,
        retain_text: bool,
    ) -> ScreeningGate:
        """Return the gate: the bank to serve (refusing a stale one), its screener and the log."""
        chosen = bank
        if chosen is None and screens_version is not None:
            chosen = latest_bank(model, screens_version)
        if chosen is None:
            chosen, fitted = load_or_fit_bank(model, store=store)
            if fitted:
                logger.info("fitted the default screens: bank %s", chosen.version)
        screener = Screener(model, chosen, max_chars=settings.max_text_chars)
        folder = root / "screening"
        log_key = load_or_create_key(folder / "log.key")
        log: AuditLog
        if database_url is not None:
            from audit.screening.log_pg import PostgresAuditLog

            log = PostgresAuditLog(database_url, key=log_key, retain_text=retain_text)
        else:
            log = SQLiteAuditLog(folder / "audit_log.sqlite3", key=log_key, retain_text=retain_text)
        logger.info("screening with bank %s (primary %s)", chosen.version, chosen.primary)
        return ScreeningGate(
            screener, log, retain_text=retain_text, tenant_flags_path=folder / "tenant_flags.json"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        root = Path(home) if home is not None else audit_home()
        model = (
            backbone
            if backbone is not None
            else await run_in_threadpool(Backbone.load, DEFAULT_BACKBONE)
        )
        registry = await run_in_threadpool(
            lambda: Registry(root / REGISTRY_FILENAME, database_url=database_url)
        )
        try:
            registry.recover_interrupted()
            engine = InferenceEngine(
                model,
                registry_loader(model, registry),
                cache_size=settings.head_cache_size,
                max_batch=settings.engine_max_batch,
                max_wait_ms=settings.engine_max_wait_ms,
            )
            store = ActivationStore(root / "store")
            service = TenantService(registry, model, store, engine=engine)
            gate = (
                await run_in_threadpool(_open_gate, root, model, store, settings, retain_text)
                if screening
                else None
            )
            engine.start()
            app.state.api = ApiState(
                settings=settings,
                registry=registry,
                service=service,
                backbone=model,
                limiter=RateLimiter(settings.rate_limit_per_minute),
                admin_digest=admin_digest,
                gate=gate,
            )
            if admin_digest is None:
                logger.warning("%s is not set: the owner routes answer 503", ADMIN_KEY_ENV)
            logger.info("serving tenants on backbone %s (%s)", model.name, model.fingerprint)
            try:
                yield
            finally:
                service.close()
                if gate is not None and gate.log is not None:
                    gate.log.close()
                app.state.api = None
        finally:
            registry.close()

    app = FastAPI(
        title="alignment-audit tenant API",
        version=_package_version(),
        summary="Tenants' heads on a shared, frozen backbone: keys, corpora, training, predictions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_request_bytes=settings.max_request_bytes,
        max_corpus_bytes=settings.max_corpus_bytes,
    )
    app.include_router(tenant_routes.router)
    app.include_router(head_routes.router)
    app.include_router(export.router)
    app.include_router(screen_routes.router)
    app.include_router(log_routes.router)

    @app.get("/healthz", tags=["health"], summary="Liveness, backbone and engine statistics")
    def healthz(request: Request) -> Health:
        state = get_state(request)
        engine = state.service.engine
        return Health(
            status="ok",
            backbone=BackboneInfo(name=state.backbone.name, fingerprint=state.backbone.fingerprint),
            heads_loaded=len(engine.cache),
            queue=QueueStats(
                pending_requests=engine._queue.qsize(),
                batches_served=engine.n_batches,
                texts_served=engine.n_texts,
                max_batch=engine.max_batch,
                max_wait_ms=engine.max_wait * 1000.0,
            ),
        )

    return app
