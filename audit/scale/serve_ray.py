"""Replicas of the tenant HTTP API behind Ray Serve's HTTP proxy, sharing one AUDIT_HOME.

Each replica is a Ray Serve deployment replica running its own copy of the app ``create_app``
builds: its lifespan loads the backbone (once per replica), opens the registry and the audit
log and starts that replica's inference engine. Ray Serve's proxy spreads the requests over the
replicas. Every answer carries the ``x-audit-replica`` header naming the replica that made it.

All replicas share one AUDIT_HOME (artifacts, screen banks, heads) and one registry + audit log:
the SQLite files under that home when every replica runs on one machine (WAL and
``BEGIN IMMEDIATE`` keep one hash chain with several writers), or a PostgreSQL database
(``database_url``) when replicas run on several machines mounting a shared filesystem.

Usage::

    from audit.scale.serve_ray import run_replicas
    with run_replicas(home, replicas=2, port=8000, admin_key=key) as served:
        print(served.url)  # http://127.0.0.1:8000, /docs for the routes

``run_replicas`` starts a local Ray (or joins the cluster at ``address`` / ``RAY_ADDRESS``),
starts Serve if it is not running, deploys, waits until every replica answers and returns a
:class:`RayServeReplicas` handle; ``shutdown`` deletes the application and stops what it started.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import AuditError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from audit.api.settings import ApiSettings

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-audit-replica"
DEFAULT_APP_NAME = "audit"
DEPLOYMENT_NAME = "AuditReplica"
DEFAULT_MAX_ONGOING_REQUESTS = 64


class RayServeError(AuditError):
    """Ray Serve could not start, deploy or reach the replicas; the message names the fix."""


@dataclass(frozen=True)
class ReplicaConfig:
    """What every replica builds its app from (sent to the replicas as constructor arguments).

    ``home`` must be a path every replica's machine sees (a shared filesystem on a cluster).
    ``admin_key`` None means each replica reads AUDIT_ADMIN_KEY from its own environment.
    ``settings`` holds the ApiSettings fields; ``database_url`` puts the registry and the audit
    log on PostgreSQL instead of SQLite files under ``home``.
    """

    home: str
    admin_key: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    screening: bool = True
    screens_version: str | None = None
    retain_text: bool = False
    backbone_spec: str = "minilm"
    device: str = "cpu"
    max_length: int | None = None
    database_url: str | None = None


class ReplicaHeaderMiddleware:
    """ASGI middleware adding ``x-audit-replica: <replica id>`` to every HTTP answer."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


def build_replica_app(config: ReplicaConfig, replica_id: str) -> FastAPI:
    """Return the tenant API app of one replica, tagged with ``replica_id`` in every answer.

    Run inside the replica's process: AUDIT_HOME is pointed at the shared home there, since the
    screen-bank catalog is found through it. The backbone is loaded here, once per replica; the
    app's lifespan (run by Ray Serve when the replica starts) opens the registry and the log.
    """
    from audit.api import create_app
    from audit.api.settings import ApiSettings
    from probes.backbone import Backbone

    os.environ["AUDIT_HOME"] = config.home
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    backbone = Backbone.load(
        config.backbone_spec, device=config.device, max_length=config.max_length
    )
    app = create_app(
        home=Path(config.home),
        backbone=backbone,
        admin_key=config.admin_key,
        settings=ApiSettings(**config.settings),
        screening=config.screening,
        screens_version=config.screens_version,
        retain_text=config.retain_text,
        database_url=config.database_url,
    )
    app.add_middleware(ReplicaHeaderMiddleware, replica_id=replica_id)
    logger.info("replica %s serves AUDIT_HOME %s", replica_id, config.home)
    return app


def replica_deployment(
    *,
    num_replicas: int,
    num_cpus: float,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    ray_actor_options: Mapping[str, Any] | None = None,
) -> Any:
    """Return the Ray Serve deployment (not yet bound) running ``num_replicas`` API replicas.

    Each replica reserves ``num_cpus`` CPUs (0 or a fraction packs several on one core);
    ``max_ongoing_requests`` is how many requests one replica takes at once, so its inference
    engine can batch them.
    """
    from ray import serve

    @serve.ingress()
    class AuditReplica:
        """One replica: the app is built in the replica process, after the constructor."""

        def __init__(self, config: ReplicaConfig) -> None:
            self.config = config

        def __serve_build_asgi_app__(self) -> FastAPI:
            replica_id = serve.get_replica_context().replica_tag
            return build_replica_app(self.config, replica_id)

    options: dict[str, Any] = {"num_cpus": num_cpus, **(ray_actor_options or {})}
    return serve.deployment(
        AuditReplica,
        name=DEPLOYMENT_NAME,
        num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options=options,
    )


@contextmanager
def _audit_home(home: Path) -> Iterator[None]:
    """Point AUDIT_HOME at ``home`` for the block (the screen catalog is found through it)."""
    old = os.environ.get("AUDIT_HOME")
    os.environ["AUDIT_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("AUDIT_HOME", None)
        else:
            os.environ["AUDIT_HOME"] = old


def pin_screen_bank(
    home: Path, backbone_spec: str = "minilm", device: str = "cpu", max_length: int | None = None
) -> str:
    """Return the version of the latest screen bank under ``home``, fitting the default if none.

    Done once, before deploying, so that replicas never fit a bank (minutes, and each would fit
    its own) and all of them serve the same version.
    """
    from audit.screening.catalog import load_or_fit_bank
    from probes.backbone import Backbone

    backbone = Backbone.load(backbone_spec, device=device, max_length=max_length)
    with _audit_home(home):
        bank, fitted = load_or_fit_bank(backbone)
    if fitted:
        logger.info("fitted the default screens: bank %s", bank.version)
    return str(bank.version)


def require_ray() -> None:
    """Raise RayServeError naming the install command unless Ray Serve can be imported."""
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise RayServeError(
            f"Serving replicas needs Ray Serve, which is not installed ({exc}); install it with "
            "`pip install 'ray[serve]'`."
        ) from exc


def _connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray; return whether this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    joining = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    try:
        if joining:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        raise RayServeError(
            f"Could not start or join Ray at {where}: {exc}. Start the head with "
            "`ray start --head` and pass its address (--address HOST:6379 or RAY_ADDRESS)."
        ) from exc
    return True


def _start_serve(host: str, port: int) -> bool:
    """Start Serve's HTTP proxy on ``host:port`` unless it runs; return whether this started it."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        running = client.http_config
        if int(running.port) != port:
            raise RayServeError(
                f"Ray Serve already runs on this cluster with its HTTP proxy on port "
                f"{running.port}, not {port}; pass --port {running.port} or stop it first "
                "(`serve shutdown`)."
            )
        return False
    serve.start(http_options={"host": host, "port": port})
    return True


@dataclass
class RayServeReplicas:
    """Running replicas behind Ray Serve: the base URL, and ``scale`` / ``shutdown``."""

    url: str
    app_name: str
    config: ReplicaConfig
    num_replicas: int
    deployment: Any
    started_serve: bool
    started_ray: bool
    ready_timeout_s: float = 300.0

    def _deploy(self, num_replicas: int) -> None:
        from ray import serve

        app = self.deployment.options(num_replicas=num_replicas).bind(self.config)
        try:
            serve.run(app, name=self.app_name, route_prefix="/")
        except Exception as exc:  # Serve raises its own types for a replica that fails to start
            raise RayServeError(
                f"Ray Serve could not start the replicas of {self.app_name!r}: {exc}. Look at "
                "the replica logs (under the Ray session folder, logs/serve/) for the cause."
            ) from exc
        self._wait_ready(num_replicas)
        self.num_replicas = num_replicas

    def _wait_ready(self, num_replicas: int) -> None:
        """Wait until ``num_replicas`` replicas run and the proxy answers /healthz with 200."""
        import httpx
        from ray import serve

        deadline = time.monotonic() + self.ready_timeout_s
        states: dict[str, int] = {}
        while time.monotonic() < deadline:
            application = serve.status().applications.get(self.app_name)
            deployment = application.deployments.get(DEPLOYMENT_NAME) if application else None
            replica_states = deployment.replica_states if deployment else {}
            states = {str(getattr(k, "value", k)): n for k, n in replica_states.items() if n}
            if states == {"RUNNING": num_replicas}:
                break
            time.sleep(0.2)
        else:
            raise RayServeError(
                f"{self.app_name!r} did not reach {num_replicas} running replicas within "
                f"{self.ready_timeout_s:.0f} s (replica states: {states}); check the cluster has "
                "the CPUs they ask for (num_cpus per replica) and the replica logs."
            )
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RayServeError(
            f"The Ray Serve proxy at {self.url} did not answer /healthz within "
            f"{self.ready_timeout_s:.0f} s; is the port reachable from here?"
        )

    def scale(self, num_replicas: int) -> None:
        """Redeploy with ``num_replicas`` replicas (Serve replaces the replicas one by one)."""
        if num_replicas < 1:
            raise RayServeError(f"num_replicas must be at least 1; got {num_replicas}.")
        self._deploy(num_replicas)

    def shutdown(self) -> None:
        """Delete the application, then stop Serve and Ray if ``run_replicas`` started them."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            serve.delete(self.app_name)
            if self.started_serve:
                serve.shutdown()
        finally:
            if self.started_ray:
                ray.shutdown()

    def __enter__(self) -> RayServeReplicas:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def run_replicas(
    home: Path,
    *,
    replicas: int = 2,
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_key: str | None = None,
    settings: ApiSettings | None = None,
    screening: bool = True,
    screens_version: str | None = None,
    retain_text: bool = False,
    backbone_spec: str = "minilm",
    device: str = "cpu",
    max_length: int | None = None,
    database_url: str | None = None,
    address: str | None = None,
    num_cpus_per_replica: float = 1.0,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    ray_num_cpus: int | None = None,
    app_name: str = DEFAULT_APP_NAME,
    ready_timeout_s: float = 300.0,
) -> RayServeReplicas:
    """Deploy ``replicas`` copies of the tenant API on Ray Serve and return once all answer.

    ``home`` is the shared AUDIT_HOME; ``admin_key`` defaults to AUDIT_ADMIN_KEY here and is
    handed to every replica. With ``screening``, every replica serves ``screens_version`` (default:
    the latest bank under ``home``, fitted now if there is none). Ray is joined at ``address`` (or
    RAY_ADDRESS) when given, else a local Ray with ``ray_num_cpus`` CPUs is started; an already
    initialised Ray in this process is reused. Serve's HTTP proxy listens on ``host:port``.
    """
    from audit.api.app import ADMIN_KEY_ENV
    from audit.api.settings import ApiSettings
    from audit.db import is_database_url, redact_url
    from audit.storage_faults import check_writable

    require_ray()
    if replicas < 1:
        raise RayServeError(f"replicas must be at least 1; got {replicas}.")
    if database_url is not None and not is_database_url(database_url):
        raise RayServeError(
            f"database_url must be a postgresql:// URL. Got {redact_url(database_url)!r}; "
            "leave it out to keep the registry and the log in SQLite under the home."
        )
    home = Path(home).expanduser().resolve()
    check_writable(home)
    if screening and screens_version is None:
        screens_version = pin_screen_bank(home, backbone_spec, device, max_length)
    config = ReplicaConfig(
        home=str(home),
        admin_key=admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV),
        settings=(settings or ApiSettings()).model_dump(),
        screening=screening,
        screens_version=screens_version,
        retain_text=retain_text,
        backbone_spec=backbone_spec,
        device=device,
        max_length=max_length,
        database_url=database_url,
    )
    started_ray = _connect_ray(address, ray_num_cpus)
    started_serve = False
    served: RayServeReplicas | None = None
    try:
        started_serve = _start_serve(host, port)
        client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        served = RayServeReplicas(
            url=f"http://{client_host}:{port}",
            app_name=app_name,
            config=config,
            num_replicas=replicas,
            deployment=replica_deployment(
                num_replicas=replicas,
                num_cpus=num_cpus_per_replica,
                max_ongoing_requests=max_ongoing_requests,
            ),
            started_serve=started_serve,
            started_ray=started_ray,
            ready_timeout_s=ready_timeout_s,
        )
        served._deploy(replicas)
    except BaseException:
        if served is not None:
            served.shutdown()
        else:
            _stop(started_serve, started_ray)
        raise
    logger.info("%d replica(s) of the tenant API at %s", replicas, served.url)
    return served


def _stop(started_serve: bool, started_ray: bool) -> None:
    import ray
    from ray import serve

    if started_serve:
        serve.shutdown()
    if started_ray:
        ray.shutdown()


def describe(served: RayServeReplicas) -> dict[str, Any]:
    """Return the address, replica count and configuration (without the admin key) as JSON data."""
    config = asdict(served.config)
    config["admin_key"] = "set" if config["admin_key"] else None
    if config["database_url"]:
        from audit.db import redact_url

        config["database_url"] = redact_url(config["database_url"])
    return {"url": served.url, "app": served.app_name, "replicas": served.num_replicas, **config}
