"""`audit datasets --requests` lists the request-screening sources (probes.requests)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from audit.cli import main
from probes.requests import REQUEST_SOURCES, list_request_sources


def test_datasets_requests_json_matches_the_library() -> None:
    result = CliRunner().invoke(main, ["datasets", "--requests", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(REQUEST_SOURCES)
    assert {r["name"]: r["n_rows"] for r in rows} == {
        i.name: i.n_rows for i in list_request_sources()
    }
    assert [r["name"] for r in rows if r["templated"]] == ["templated_facts"]


def test_datasets_requests_human_output() -> None:
    result = CliRunner().invoke(main, ["datasets", "--requests"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(REQUEST_SOURCES)
    assert lines[0].split()[:3] == ["advbench", "harmful", "520"]
    assert [line.split()[0] for line in lines if "(templated)" in line] == ["templated_facts"]
