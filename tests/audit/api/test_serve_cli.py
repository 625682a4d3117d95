"""`audit serve`: its options come from ApiSettings, and the README's HTTP example keeps working."""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import fields
from pathlib import Path

from click.testing import CliRunner

from audit.api import ApiSettings
from audit.api.models import HeadCreate
from audit.cli import main
from audit.serve_cli import serve
from audit.tenants.heads import HeadSpec
from audit.tenants.service import MAX_CORPUS_BYTES
from tests.audit.api.helpers import ADMIN_KEY, Live

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()
SECTION = README.split("## Serving tenants: the HTTP API", 1)[1].split("\n## ", 1)[0]
(SHELL,) = re.findall(r"```shell\n(.*?)```", SECTION, flags=re.S)
# Variables the README sets by hand from an answer's fields.
FROM_ANSWER = {
    "tenant_id": "TENANT",
    "api_key": "KEY",
    "corpus_id": "CORPUS",
    "head_id": "HEAD",
    "job_id": "JOB",
}


def _commands() -> list[str]:
    """Return the README block's commands, continuation lines joined, comments dropped."""
    joined = SHELL.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_serve_is_registered_and_documents_every_setting() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for name in ApiSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in result.output
    assert "AUDIT_ADMIN_KEY" in result.output


def test_serve_builds_the_app_from_its_options(monkeypatch, backbone) -> None:
    import uvicorn

    from probes.backbone import Backbone

    seen = {}
    monkeypatch.setattr(Backbone, "load", classmethod(lambda cls, *a, **k: backbone))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    monkeypatch.delenv("AUDIT_ADMIN_KEY", raising=False)
    args = ["serve", "--port", "8123", "--rate-limit-per-minute", "5", "--max-text-chars", "50"]
    result = CliRunner().invoke(main, [*args, "--no-screening", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["url"] == "http://127.0.0.1:8123"
    assert info["backbone"]["fingerprint"] == backbone.fingerprint
    settings = seen["app"].state.settings
    assert (settings.rate_limit_per_minute, settings.max_text_chars) == (5, 50)
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert "AUDIT_ADMIN_KEY is not set" in result.stderr
    assert info["screening"] is None
    bad = CliRunner().invoke(main, ["serve", "--max-text-chars", "0"])
    assert bad.exit_code == 2 and "--max-text-chars" in bad.output


def test_serve_starts_with_the_latest_screen_bank(monkeypatch, backbone, screen_bank) -> None:
    import uvicorn

    from probes.backbone import Backbone

    seen = {}
    monkeypatch.setattr(Backbone, "load", classmethod(lambda cls, *a, **k: backbone))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    result = CliRunner().invoke(main, ["serve", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["screening"] == {"version": screen_bank.version, "primary": screen_bank.primary}
    missing = CliRunner().invoke(main, ["serve", "--screens", "nonexistent"])
    assert missing.exit_code == 1 and "audit screen list" in missing.output


def test_settings_and_head_fields_match_what_they_mirror() -> None:
    assert ApiSettings().max_corpus_bytes == MAX_CORPUS_BYTES
    request_only = {"corpus_id", "screen_policy"}
    assert set(HeadCreate.model_fields) - request_only == {f.name for f in fields(HeadSpec)}


def test_readme_serve_command_uses_real_options() -> None:
    (line,) = [c for c in _commands() if c.startswith("audit serve")]
    args = [a for a in shlex.split(line)[1:] if a != "&"]
    options = {opt for param in serve.params for opt in param.opts}
    assert all(a in options for a in args if a.startswith("--")), args


def test_readme_curl_example_runs_against_the_server(api: Live, corpus_bytes: bytes) -> None:
    env = {"API": api.url, "AUDIT_ADMIN_KEY": ADMIN_KEY}
    curls = [c for c in _commands() if c.startswith("curl ")]
    assigned = {
        name
        for c in _commands()
        if re.match(r"^[A-Z_]+=\S+_\.\.\.", c)
        for name in re.findall(r"([A-Z_]+)=", c)
    }
    assert assigned <= set(FROM_ANSWER.values()), assigned
    assert len(curls) == 5
    for command in curls:
        method, url, headers, body = "GET", "", {}, None
        words = iter(shlex.split(command)[1:])
        for word in words:
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, _, value = next(words).partition(": ")
                headers[name] = value
            elif word in ("-d", "--data-binary"):
                value = next(words)
                body = corpus_bytes if value.startswith("@") else value
                method = "POST" if method == "GET" else method
            elif not word.startswith("-"):
                url = word

        def fill(text: str) -> str:
            return re.sub(r"\$(\w+)", lambda m: env[m.group(1)], text)

        if isinstance(body, str):
            body = fill(body).encode()
        request = {"headers": {k: fill(v) for k, v in headers.items()}, "content": body}
        answer = api.client.request(method, fill(url), **request)
        deadline = time.monotonic() + 120
        while "/v1/jobs/" in url and answer.json()["status"] != "done":
            assert answer.json()["status"] != "failed" and time.monotonic() < deadline, answer.text
            time.sleep(0.1)
            answer = api.client.request(method, fill(url), **request)
        assert answer.is_success, (command, answer.text)
        payload = answer.json()
        for field, name in FROM_ANSWER.items():
            if isinstance(payload, dict) and field in payload:
                env[name] = payload[field]
    assert payload["head_id"] == env["HEAD"] and len(payload["results"]) == 2
    assert all(r["label"] in ("negative", "positive") for r in payload["results"])
