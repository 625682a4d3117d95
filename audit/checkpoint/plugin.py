"""pytest plugin: ``pytest --audit-checkpoint PATH`` audits a checkpoint, one test per check.

Registered through the ``pytest11`` entry point. Options share the ``--audit-`` prefix; the
audit lives in ``config.stash``; heavy imports wait until an audit is asked for, so ``pytest
--help`` and ordinary test runs stay fast. The spec file (``--audit-spec``, default
``audit.toml`` in the working folder) is collected as the audit's test file: without other
paths on the command line, only the audit runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_AUDIT = pytest.StashKey[Any]()  # the CheckpointAudit
_PLAN = pytest.StashKey[list[Any]]()
_REPORT = pytest.StashKey[Path]()
DEFAULT_SPEC = "audit.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("audit", "checkpoint audits (alignment-audit)")
    group.addoption(
        "--audit-checkpoint",
        metavar="PATH",
        default=None,
        help="Audit this checkpoint (a local Hugging Face model folder) against the spec.",
    )
    group.addoption(
        "--audit-spec",
        metavar="TOML",
        default=None,
        help=f"The audit spec (default: {DEFAULT_SPEC} in the working folder).",
    )
    group.addoption(
        "--audit-baseline",
        metavar="DIR",
        default=None,
        help="The baseline folder (default: <spec name>.baseline beside the spec).",
    )
    group.addoption(
        "--audit-update-baseline",
        action="store_true",
        default=False,
        help="Record the checkpoint's figures and probes as the new baseline.",
    )
    group.addoption(
        "--audit-report",
        metavar="DIR",
        default="reports",
        help="Where the audit's report folder goes (default: reports).",
    )


@pytest.hookimpl(tryfirst=True)  # before junitxml reads --junitxml
def pytest_configure(config: pytest.Config) -> None:
    checkpoint = config.getoption("audit_checkpoint")
    if not checkpoint:
        return
    from audit.checkpoint.runner import CheckpointAudit
    from audit.checkpoint.spec import AuditSpecError, load_spec
    from audit.errors import AuditError
    from audit.report import new_run_dir
    from probes.errors import ProbesError

    spec_path = Path(config.getoption("audit_spec") or DEFAULT_SPEC).resolve()
    try:
        spec = load_spec(spec_path)
    except AuditSpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    baseline = config.getoption("audit_baseline")
    baseline_dir = Path(baseline) if baseline else spec_path.with_name(spec_path.stem + ".baseline")
    audit = CheckpointAudit(
        checkpoint=Path(checkpoint).resolve(),
        spec=spec,
        spec_path=spec_path,
        baseline_dir=baseline_dir.resolve(),
        update_baseline=bool(config.getoption("audit_update_baseline")),
    )
    try:
        report_dir = new_run_dir(Path(config.getoption("audit_report")), f"audit-{spec.name}")
    except (AuditError, ProbesError) as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_AUDIT] = audit
    config.stash[_REPORT] = report_dir
    if getattr(config.option, "xmlpath", None) is None:
        config.option.xmlpath = str(report_dir / "junit.xml")  # pytest's own junit writer
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(spec_path)]
    elif str(spec_path) not in {str(Path(a).resolve()) for a in config.args}:
        config.args.append(str(spec_path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    audit = parent.config.stash.get(_AUDIT, None)
    if audit is not None and file_path.resolve() == audit.spec_path:
        return AuditSpecFile.from_parent(parent, path=file_path)
    return None


class AuditSpecFile(pytest.File):
    """The spec file, collected as one test per planned check."""

    def collect(self) -> list[pytest.Item]:
        audit = self.config.stash[_AUDIT]
        try:
            plan = audit.plan()
        except Exception as exc:  # a bad checkpoint or baseline: one failing test says why
            return [AuditPlanError.from_parent(self, name="plan", reason=str(exc))]
        self.config.stash[_PLAN] = plan
        return [AuditCheck.from_parent(self, name=p.check_id, planned=p) for p in plan]


class AuditCheckFailed(Exception):
    """A check whose measured figure missed the spec's bar."""


class AuditPlanError(pytest.Item):
    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        raise AuditCheckFailed(f"the audit could not start: {self.reason}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, "checkpoint audit: plan"


class AuditCheck(pytest.Item):
    """One check of the audit: passes when the measured figure clears the spec's bar."""

    def __init__(self, *, planned: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    def runtest(self) -> None:
        from audit.checkpoint.runner import CheckpointError

        audit = self.config.stash[_AUDIT]
        try:
            outcome = audit.outcome(self.planned)
        except CheckpointError as exc:
            raise AuditCheckFailed(
                f"{self.planned.check_id}: could not be measured: {exc}"
            ) from None
        self.user_properties.append(("measured", outcome.measured))
        self.user_properties.append(("expected", outcome.expected.text()))
        if outcome.skipped is not None:
            pytest.skip(outcome.message())
        if not outcome.passed:
            detail = "".join(f"\n    {k}: {v}" for k, v in outcome.details.items())
            raise AuditCheckFailed(outcome.message() + detail)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, AuditCheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)  # type: ignore[return-value]

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"checkpoint audit: {self.planned.check_id}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    audit = session.config.stash.get(_AUDIT, None)
    if audit is None:
        return
    audit.finish(session.config.stash.get(_PLAN, []), session.config.stash[_REPORT])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    audit = config.stash.get(_AUDIT, None)
    if audit is None:
        return
    tr = terminalreporter
    tr.section("checkpoint audit")
    fingerprint = audit._backbone.fingerprint[:16] if audit._backbone is not None else "not loaded"
    tr.write_line(f"checkpoint: {audit.checkpoint} (fingerprint {fingerprint})")
    tr.write_line(f"spec: {audit.spec_path} ({audit.spec.name})")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in audit.outcomes.values():
        key = "skipped" if outcome.skipped else "passed" if outcome.passed else "failed"
        counts[key] += 1
    tr.write_line(
        f"checks measured: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped"
    )
    for group, reason in audit.errors.items():
        tr.write_line(f"could not measure {group}: {reason}", red=True)
    if audit.update_baseline:
        written = not audit.errors and audit._backbone is not None
        tr.write_line(
            f"baseline {'written to' if written else 'NOT written (errors above):'} "
            f"{audit.baseline_dir}"
        )
    tr.write_line(f"report: {config.stash[_REPORT]}")
