"""Tenant isolation under a randomised mix of thousands of requests from many tenants.

Every tenant's head has label names of its own, so an answer carrying another tenant's output
would show it. Each request is checked: a tenant sees only its own heads, outputs, labels, corpora,
jobs and audit-log records; anything of another tenant's answers the same 404 as what does not
exist. The counts go to ``reports/reliability/isolation.json``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from audit.api import ApiSettings
from tests.audit.api.helpers import ADMIN_KEY, bearer, create_tenant, live_server, upload
from tests.reliability.fleet import benign_corpus, write_report

N_TENANTS = 8
N_REQUESTS = 2400
CONCURRENCY = 16

pytestmark = pytest.mark.slow


@dataclass
class Owner:
    tenant_id: str
    key: dict[str, str]
    corpus_id: str
    head_id: str
    job_id: str
    labels: frozenset[str]
    decisions: list[str] = field(default_factory=list)


@dataclass
class Tally:
    checks: Counter[str] = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str, detail: str) -> None:
        self.checks[what] += 1
        if not ok:
            self.leaks.append(f"{what}: {detail}")


def _provision(client: httpx.Client) -> list[Owner]:
    owners = []
    for i in range(N_TENANTS):
        tenant_id, key = create_tenant(client, f"isolated-{i}")
        corpus_id = upload(client, tenant_id, key, benign_corpus(32, f"t{i}-"))
        r = client.post(
            f"/v1/tenants/{tenant_id}/heads",
            json={
                "corpus_id": corpus_id,
                "kind": "linear",
                "epochs": 2,
                "screen_policy": "exclude",
            },
            headers=key,
        )
        assert r.status_code == 202, r.text
        body = r.json()
        labels = frozenset({f"t{i}-long", f"t{i}-short"})
        owners.append(
            Owner(tenant_id, key, body["corpus_id"], body["head_id"], body["job_id"], labels)
        )
    return owners


async def _one(client: httpx.AsyncClient, me: Owner, other: Owner, tally: Tally, rng) -> None:
    kind = rng.choice(
        [
            "predict_own",
            "predict_own",
            "predict_own",
            "screen",
            "predict_other",
            "head_other",
            "corpus_other",
            "job_other",
            "decision_other",
            "decisions_other",
            "decisions_own",
            "list_heads_own",
        ]
    )
    texts = ["How many apples are left if Sam eats three of ten?", "What is 12 times 7?"]
    if kind == "predict_own":
        r = await client.post(
            f"/v1/tenants/{me.tenant_id}/heads/{me.head_id}/predict",
            json={"texts": texts},
            headers=me.key,
        )
    elif kind == "screen":
        r = await client.post("/v1/screen", json={"texts": texts[:1]}, headers=me.key)
    elif kind == "predict_other":
        r = await client.post(
            f"/v1/tenants/{other.tenant_id}/heads/{other.head_id}/predict",
            json={"texts": texts},
            headers=me.key,
        )
    elif kind == "head_other":
        r = await client.get(f"/v1/tenants/{other.tenant_id}/heads/{other.head_id}", headers=me.key)
    elif kind == "corpus_other":
        r = await client.get(f"/v1/tenants/{other.tenant_id}/corpora", headers=me.key)
    elif kind == "job_other":
        r = await client.get(f"/v1/jobs/{other.job_id}", headers=me.key)
    elif kind == "decision_other":
        if not other.decisions:
            return
        r = await client.get(f"/v1/decisions/{rng.choice(other.decisions)}", headers=me.key)
    elif kind == "decisions_other":
        r = await client.get(f"/v1/tenants/{other.tenant_id}/decisions", headers=me.key)
    elif kind == "decisions_own":
        r = await client.get(f"/v1/tenants/{me.tenant_id}/decisions?limit=50", headers=me.key)
    else:
        r = await client.get(f"/v1/tenants/{me.tenant_id}/heads", headers=me.key)
    if r.status_code >= 500:
        tally.server_errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
        return
    text = r.text
    foreign = [o for o in (other,) if o.tenant_id in text or any(lb in text for lb in o.labels)]
    if kind.endswith("_other"):
        tally.expect(r.status_code == 404, kind, f"{r.status_code} {text[:200]}")
        tally.expect(not foreign, f"{kind}_body", text[:200])
        return
    tally.expect(r.status_code == 200, kind, f"{r.status_code} {text[:200]}")
    tally.expect(not foreign, f"{kind}_body", text[:200])
    body = r.json()
    if kind == "predict_own":
        tally.expect(body["head_id"] == me.head_id, "predict_head_id", str(body)[:200])
        for result in body["results"]:
            if not result.get("blocked"):
                shown = {result["label"], *result["scores"]}
                tally.expect(shown <= me.labels, "predict_labels", str(shown))
            me.decisions.append(result["screening"]["decision_id"])
    elif kind == "screen":
        me.decisions += [d["decision_id"] for d in body["results"]]
    elif kind == "decisions_own":
        owners = {d["tenant_id"] for d in body["decisions"]}
        tally.expect(owners <= {me.tenant_id}, "decisions_own_tenants", str(owners))
    elif kind == "list_heads_own":
        ids = {h["head_id"] for h in body}
        tally.expect(ids == {me.head_id}, "list_heads_own_ids", str(ids))


async def _drive(url: str, owners: list[Owner], tally: Tally) -> None:
    rng = random.Random(20261130)
    plan = [tuple(rng.sample(owners, 2)) for _ in range(N_REQUESTS)]
    queue: asyncio.Queue[tuple[Owner, Owner]] = asyncio.Queue()
    for pair in plan:
        queue.put_nowait(pair)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(seed: int) -> None:
            local = random.Random(seed)
            while not queue.empty():
                me, other = queue.get_nowait()
                await _one(client, me, other, tally, local)

        await asyncio.gather(*(worker(s) for s in range(CONCURRENCY)))


def test_thousands_of_mixed_requests_never_cross_tenants(
    tmp_path: Path, backbone, screen_bank
) -> None:
    settings = ApiSettings(rate_limit_per_minute=0, engine_max_wait_ms=10)
    home = tmp_path / "home"
    with live_server(
        home, backbone, admin_key=ADMIN_KEY, screening=True, bank=screen_bank, settings=settings
    ) as live:
        owners = _provision(live.client)
        for owner in owners:
            assert live.state.service.wait(owner.job_id, timeout=300).status == "ready"
        tally = Tally()
        asyncio.run(_drive(live.url, owners, tally))
        # Each tenant's logged decisions are exactly the ones it was answered, and no other's.
        for owner in owners:
            listed: set[str] = set()
            before = None
            while True:
                query = "limit=1000" + (f"&before_seq={before}" if before else "")
                r = live.client.get(
                    f"/v1/tenants/{owner.tenant_id}/decisions?{query}", headers=owner.key
                )
                page = r.json()
                listed |= {d["decision_id"] for d in page["decisions"] if d["kind"] != "corpus"}
                before = page["next_before_seq"]
                if before is None:
                    break
            tally.expect(
                listed == set(owner.decisions),
                "log_matches_answers",
                f"{owner.tenant_id}: {len(listed)} logged, {len(owner.decisions)} answered",
            )
        # Keys are stored hashed: no file under the home holds a key in plain text.
        keys = [o.key["Authorization"].removeprefix("Bearer ").encode() for o in owners]
        for path in home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                tally.expect(not any(k in data for k in keys), "key_not_stored", str(path))
        # An admin key is not a tenant key, and a tenant key is not another's.
        r = live.client.get(f"/v1/tenants/{owners[0].tenant_id}/decisions", headers=bearer("x"))
        tally.expect(r.status_code == 401, "bad_key", str(r.status_code))
    total = sum(tally.checks.values())
    summary = {
        "tenants": N_TENANTS,
        "requests": N_REQUESTS,
        "concurrency": CONCURRENCY,
        "checks": total,
        "checks_by_kind": dict(sorted(tally.checks.items())),
        "leaks": len(tally.leaks),
        "server_errors": len(tally.server_errors),
    }
    write_report("isolation", summary)
    print(f"\nisolation: {json.dumps(summary)}")
    assert not tally.server_errors, tally.server_errors[:5]
    assert not tally.leaks, tally.leaks[:5]
    assert total >= 2 * N_REQUESTS
