"""Test helper: append decision records to an audit log in batches, printing each acknowledged id.

Usage: ``python log_writer.py DB N_BATCHES BATCH_SIZE TAG`` (``N_BATCHES`` 0: until killed). The
MAC key comes from ``AUDIT_LOG_KEY``. Each decision_id is printed and flushed only after the
``append`` holding it has returned, so every id on stdout was acknowledged as durable.

The ``probes``, ``audit`` and ``audit.screening`` package ``__init__`` modules import torch, which
takes seconds; this helper registers them as bare namespace packages so that only the real
``audit/screening/log.py`` and its two small ``probes`` imports load (well under a second).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _bare_packages() -> None:
    for name in ("probes", "audit", "audit.screening"):
        module = types.ModuleType(name)
        module.__path__ = [str(ROOT.joinpath(*name.split(".")))]
        sys.modules[name] = module


def main(argv: list[str]) -> None:
    _bare_packages()
    from audit.screening.log import SQLiteAuditLog, make_record

    db, n_batches, batch_size, tag = argv[0], int(argv[1]), int(argv[2]), argv[3]
    log = SQLiteAuditLog(db)
    batch_no = 0
    while n_batches == 0 or batch_no < n_batches:
        records = [
            make_record(
                f"{tag} request {batch_no}.{i}",
                screen="harm",
                screen_version="v1",
                backbone_fingerprint="fp",
                layers=[3],
                score=(batch_no * batch_size + i) % 100 / 100,
                block_threshold=0.9,
                flag_threshold=0.5,
                decision="allow",
                tenant_id=tag,
            )
            for i in range(batch_size)
        ]
        entries = log.append(records)
        sys.stdout.write("".join(e.record.decision_id + "\n" for e in entries))
        sys.stdout.flush()
        batch_no += 1
    log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
