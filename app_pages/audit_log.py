"""Audit log page: the screening decisions `audit serve` logged, filtered, verified and exported.

The page only reads the log (and never creates one or its key); verification uses the owner's
key as ``audit log verify`` does.
"""

from __future__ import annotations

import io
import itertools
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import streamlit as st

from app_pages.common import friendly_errors
from audit.errors import AuditError
from audit.screening.log import (
    DECISIONS,
    KEY_ENV,
    AuditKeyError,
    LogEntry,
    SQLiteAuditLog,
    default_key_path,
    default_log_path,
    iter_matching,
    load_key,
    write_csv,
)
from probes.errors import ProbesError

MAX_SHOWN = 1000


def entry_row(entry: LogEntry) -> dict[str, Any]:
    """Return one decision as a table row (top tokens as ``token (contribution)`` text)."""
    r = entry.record
    return {
        "seq": entry.seq,
        "time": r.time,
        "tenant": r.tenant_id or "",
        "head": r.head_id or "",
        "decision": r.decision,
        "screen": f"{r.screen} ({r.screen_version[:12]})",
        "score": r.score,
        "flag threshold": r.flag_threshold,
        "block threshold": r.block_threshold,
        "top tokens": ", ".join(f"{t} ({v:+.2f})" for t, v in r.top_tokens),
        "decision id": r.decision_id,
        "request hash": r.request_hash,
    }


def day_bounds(picked: Any, oldest: date, newest: date) -> tuple[datetime, datetime]:
    """Return the UTC [since, until) of the picked days (one picked day stands for both ends)."""
    days = list(picked) if isinstance(picked, tuple | list) else [picked]
    start = days[0] if days else oldest
    end = days[-1] if days else newest
    return (
        datetime.combine(start, time.min, tzinfo=UTC),
        datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
    )


def verify_chain(path: Path) -> None:
    try:
        key = load_key()
    except AuditKeyError as exc:
        st.error(
            f"Cannot verify without the log's key: {exc} The key is the one `audit serve` wrote "
            f"the log with ({default_key_path()}, or {KEY_ENV} as hex)."
        )
        return
    with friendly_errors("Verifying the chain"), SQLiteAuditLog(path, key=key) as log:
        result = log.verify()
    if result.ok:
        head = result.head["seq"] if result.head else 0
        st.success(
            f"Chain intact: {result.n_records} records verified (hash links and MACs), "
            f"head seq {head}."
        )
    else:
        st.error(
            f"Chain NOT intact at record seq {result.first_bad_seq}: {result.problem} "
            f"({result.n_records} records before it verified intact.)"
        )


def browse(path: Path) -> None:
    """Show the filters, the matching decisions and their CSV export."""
    with SQLiteAuditLog(path) as log:
        total = log.count()
        span = log.time_range()
        st.caption(f"{path}: {total} decisions")
        if span is None:
            st.info("The audit log holds no decisions yet.")
            return
        oldest = datetime.fromisoformat(span[0]).date()
        newest = datetime.fromisoformat(span[1]).date()
        columns = st.columns(4)
        tenants = columns[0].multiselect("Tenant", log.distinct("tenant_id"), key="tenants")
        decisions = columns[1].multiselect("Decision", list(DECISIONS), key="decisions")
        screens = columns[2].multiselect("Screen", log.distinct("screen"), key="screens")
        picked = columns[3].date_input(
            "Days (UTC)", value=(oldest, newest), min_value=oldest, max_value=newest, key="days"
        )
        since, until = day_bounds(picked, oldest, newest)
        matching = list(
            iter_matching(
                log,
                tenant_ids=tenants,
                decisions=decisions,
                screens=screens,
                since=since,
                until=until,
            )
        )
    st.caption(
        f"{len(matching)} of {total} decisions match"
        + (f"; the newest {MAX_SHOWN} are shown" if len(matching) > MAX_SHOWN else "")
        + ". Filters read the indexed columns; verify the chain to trust them."
    )
    st.dataframe(
        [entry_row(e) for e in itertools.islice(matching, MAX_SHOWN)],
        hide_index=True,
        column_config={
            "score": st.column_config.NumberColumn(format="%.4f"),
            "flag threshold": st.column_config.NumberColumn(format="%.4f"),
            "block threshold": st.column_config.NumberColumn(format="%.4f"),
        },
    )
    buffer = io.StringIO()
    write_csv(matching, buffer)
    st.download_button(
        "Export the matching decisions as CSV",
        data=buffer.getvalue().encode("utf-8"),
        file_name="audit_log.csv",
        mime="text/csv",
        key="export",
    )


st.title("Audit log")
path = default_log_path()
if not path.is_file():
    st.info(
        f"No audit log at {path} yet. `audit serve` writes it when it screens requests (every "
        "allow / flag / block decision is appended there); AUDIT_HOME chooses the folder."
    )
    st.stop()
try:
    browse(path)
except (AuditError, ProbesError, OSError, ValueError) as exc:
    # A damaged log is when verification matters most: show the error and keep the button.
    st.error(f"Reading the audit log failed: {exc}")
st.subheader("Chain verification")
st.caption(
    "Checks every record's hash link, content hash and MAC with the owner's key, and names the "
    "first record that was edited, removed, reordered or forged."
)
if st.button("Verify chain", key="verify"):
    verify_chain(path)
