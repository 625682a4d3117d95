"""kill -9 of `audit serve` in the middle of load, several times in a row on the same home.

Each round runs concurrent load (predictions and screening across the fleet's tenants), creates
a tenant, uploads its corpus and submits two training jobs under that load, then kills the
server with SIGKILL right after the last job is acknowledged. Before the restart: the audit log
verifies, every decision acknowledged to a client (this round and earlier ones) is in it under
its tenant, and every head the registry calls ready loads from its files. After the restart:
every tenant whose creation was acknowledged exists and its key authenticates, its corpus is
there, no head is still training (interrupted ones are failed with a message), and every ready
head answers predictions with its own labels.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit.loadgen import (
    LoadResult,
    ServerProcess,
    Workload,
    bearer,
    create_tenant,
    run_load,
    submit_head,
    tenant_labels,
    upload_corpus,
)
from audit.tenants.heads import load_head
from audit.tenants.registry import REGISTRY_FILENAME, Registry
from tests.reliability.fleet import Fleet, missing_or_misattributed, open_log, write_report

KILLS = 3
CONCURRENCY = 16
LOAD_BEFORE_KILL_S = 2.0


@dataclass
class Acknowledged:
    """What the server acknowledged to clients across every round."""

    decisions: dict[str, str] = field(default_factory=dict)  # decision id -> tenant id
    tenants: dict[str, str] = field(default_factory=dict)  # tenant id -> api key
    corpora: dict[str, str] = field(default_factory=dict)  # corpus id -> tenant id
    heads: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # head -> tenant


def _mutate_under_load(url: str, admin_key: str, round_no: int, fleet: Fleet, ack: Acknowledged):
    """Create a tenant with a corpus and submit two training jobs; record each acknowledgement."""
    labels = tenant_labels(1000 + round_no)
    rows = [(t, labels[y]) for t, y in fleet.corpus_rows]
    with httpx.Client(base_url=url, timeout=120) as client:
        tenant_id, key = create_tenant(client, admin_key, f"kill-{round_no}")
        ack.tenants[tenant_id] = key
        corpus_id = upload_corpus(client, tenant_id, key, rows)
        ack.corpora[corpus_id] = tenant_id
        # A slow job (a block trained for many epochs), then a quick one queued behind it.
        slow = {"kind": "blocks", "k": 1, "epochs": 60, "patience": 60, "batch_size": 8}
        for fields in (slow, {"kind": "linear", "epochs": 5}):
            head_id, _ = submit_head(
                client, tenant_id, key, corpus_id, screen_policy="exclude", **fields
            )
            ack.heads[head_id] = (tenant_id, labels)


async def _load_and_kill(
    server: ServerProcess, work: Workload, fleet: Fleet, round_no: int, ack: Acknowledged
) -> LoadResult:
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(work, stop))
    try:
        await asyncio.sleep(LOAD_BEFORE_KILL_S)
        await asyncio.to_thread(
            _mutate_under_load, server.url, server.admin_key, round_no, fleet, ack
        )
        server.kill()  # SIGKILL while the load's requests are in flight
    finally:
        stop.set()
        result = await load
    return result


def _check_offline(home: Path, backbone: Any, ack: Acknowledged) -> dict[str, Any]:
    """Check the stopped home: log verifies, acknowledged decisions there, ready heads load."""
    with open_log(home) as log:
        verified = log.verify()
        assert verified.ok, f"the audit log does not verify after kill -9: {verified.problem}"
        problems = missing_or_misattributed(log, ack.decisions)
        assert not problems, f"acknowledged decisions lost after kill -9: {problems[:20]}"
        n_entries = log.count()
    n_ready = 0
    with Registry(home / REGISTRY_FILENAME) as registry:
        for tenant in registry.list_tenants():
            for record in registry.list_heads(tenant.tenant_id):
                if record.status != "ready":
                    continue
                assert record.path, f"head {record.head_id} is ready without files"
                load_head(record.path, backbone)  # raises if half-written
                n_ready += 1
    return {"log_entries": n_entries, "ready_heads_loaded": n_ready}


def _check_restarted(server: ServerProcess, fleet: Fleet, ack: Acknowledged) -> dict[str, Any]:
    """Check the restarted server: acknowledged tenants, corpora and heads are as they must be."""
    outcome = {"interrupted_heads": 0, "ready_heads": 0}  # over every round so far
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for tenant_id, key in ack.tenants.items():
            r = client.get(f"/v1/tenants/{tenant_id}", headers=bearer(key))
            assert r.status_code == 200, f"acknowledged tenant {tenant_id} is gone: {r.text}"
        for corpus_id, tenant_id in ack.corpora.items():
            auth = bearer(ack.tenants[tenant_id])
            r = client.get(f"/v1/tenants/{tenant_id}/corpora", headers=auth)
            assert r.status_code == 200, r.text
            stored = {c["corpus_id"] for c in r.json()}
            assert corpus_id in stored, f"acknowledged corpus {corpus_id} is gone: {stored}"
        heads = {t.head_id: (t.tenant_id, t.api_key, t.label_names) for t in fleet.tenants}
        for head_id, (tenant_id, labels) in ack.heads.items():
            heads[head_id] = (tenant_id, ack.tenants[tenant_id], labels)
        for head_id, (tenant_id, key, labels) in heads.items():
            path = f"/v1/tenants/{tenant_id}/heads/{head_id}"
            r = client.get(path, headers=bearer(key))
            assert r.status_code == 200, f"acknowledged head {head_id} is gone: {r.text}"
            info = r.json()
            assert info["status"] in ("ready", "failed"), f"head {head_id} after restart: {info}"
            if info["status"] == "failed":
                assert info["error"], f"head {head_id} failed without a message"
                outcome["interrupted_heads"] += info["error"].startswith("interrupted")
                continue
            outcome["ready_heads"] += 1
            r = client.post(f"{path}/predict", json={"text": fleet.texts[0]}, headers=bearer(key))
            assert r.status_code == 200, f"ready head {head_id} does not predict: {r.text}"
            [result] = r.json()["results"]
            assert result.get("blocked") or result["label"] in labels, (head_id, result)
    return outcome


@pytest.mark.slow
def test_kill_9_under_load_keeps_log_tenants_and_heads(
    fleet: Fleet, fleet_home: Path, backbone
) -> None:
    ack = Acknowledged()
    server = fleet.server(fleet_home)
    rounds: list[dict[str, Any]] = []
    report: dict[str, Any] = {"kills": KILLS, "concurrency": CONCURRENCY, "rounds": rounds}
    try:
        server.start()
        for round_no in range(KILLS):
            work = Workload(
                server.url,
                fleet.tenants,
                fleet.texts,
                concurrency=CONCURRENCY,
                duration_s=60.0,  # ended by the kill
                screen_fraction=0.3,
                texts_per_request=2,
                seed=round_no,
            )
            result = asyncio.run(_load_and_kill(server, work, fleet, round_no, ack))
            assert result.n_5xx == 0, f"5xx under load: {result.errors}\n{server.stderr_tail()}"
            assert not result.leaks, result.leaks
            assert not result.duplicates, result.duplicates
            ack.decisions.update(result.decisions)
            offline = _check_offline(fleet_home, backbone, ack)
            server.restart()
            restarted = _check_restarted(server, fleet, ack)
            rounds.append(
                {
                    "round": round_no,
                    "requests_answered": result.n_requests,
                    "decisions_acknowledged": len(result.decisions),
                    "requests_cut_by_kill": result.n_transport_errors,
                    "status_counts": dict(result.summary()["status_counts"]),
                    **offline,
                    **restarted,
                }
            )
            print(f"\nkill {round_no + 1}/{KILLS} survived: {rounds[-1]}")
    finally:
        server.stop()
        report["kills_survived"] = len(rounds)
        report["decisions_acknowledged"] = len(ack.decisions)
        report["interrupted_heads"] = rounds[-1]["interrupted_heads"] if rounds else 0
        write_report("kill", report)
    final = _check_offline(fleet_home, backbone, ack)
    print(f"\nkills survived: {len(rounds)}/{KILLS}; final: {final}")
    assert report["interrupted_heads"] >= 1, (
        "no training job was in flight at any kill, so recovery of interrupted heads went "
        "untested; submit slower jobs before the kill"
    )
