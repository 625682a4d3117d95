"""Many concurrent clients across 24 tenants against `audit serve` with screening on.

No 5xx, no transport error, no answer carrying another tenant's head or labels, and every
decision acknowledged to a client is in the audit log exactly once, filed under its tenant.
The figures (req/s, latency percentiles) are printed and written to reports/reliability/; they
are not asserted (speed is measured by ``audit bench --only serving_load``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.loadgen import Workload, run_load_sync
from tests.reliability.fleet import (
    Fleet,
    duplicated_decision_ids,
    log_count,
    missing_or_misattributed,
    open_log,
    write_report,
)

CONCURRENCY = 32
SECONDS = 15.0


@pytest.mark.slow
def test_load_many_tenants_no_errors_every_decision_logged_once(
    fleet: Fleet, fleet_home: Path
) -> None:
    before, before_requests = log_count(fleet_home), log_count(fleet_home, kind="request")
    server = fleet.server(fleet_home)
    with server:
        result = run_load_sync(
            Workload(
                server.url,
                fleet.tenants,
                fleet.texts,
                concurrency=CONCURRENCY,
                duration_s=SECONDS,
                screen_fraction=0.25,
            )
        )
    summary = result.summary()
    print(f"\nload: {summary}")
    write_report("load", summary)
    server_log = server.stderr_tail()

    assert len(fleet.tenants) >= 24 and result.concurrency >= 32
    assert result.n_requests > 0, f"no request was answered; server log:\n{server_log}"
    assert result.n_5xx == 0, f"5xx answers: {result.errors}\nserver log:\n{server_log}"
    assert result.n_transport_errors == 0, result.transport_errors
    assert result.n_ok == result.n_requests, f"non-200 answers: {result.errors}"
    assert not result.leaks, f"answers carrying another tenant's head or labels: {result.leaks}"
    assert not result.duplicates, f"decision ids acknowledged twice: {result.duplicates}"
    assert len(result.decisions) == result.n_texts_ok  # one decision per text answered

    with open_log(fleet_home) as log:
        problems = missing_or_misattributed(log, result.decisions)
        assert not problems, f"acknowledged decisions lost or misfiled: {problems[:20]}"
        # Only this run's clients sent requests: the log grew by exactly their decisions.
        assert log.count(kind="request") - before_requests == len(result.decisions)
        assert log.count() - before == len(result.decisions)
        verified = log.verify()
        assert verified.ok, f"the audit log does not verify: {verified.problem}"
    assert not duplicated_decision_ids(fleet_home)
