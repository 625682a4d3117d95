"""The README's documented commands keep working, and CI runs the README's test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    bash = _blocks("bash")
    assert len(bash) == 2, "the README opens with exactly two commands"
    main_command, test_command = (b.strip() for b in bash)
    assert README.index(main_command) < README.index("## ")
    assert main_command.endswith(
        "streamlit run app.py"
    )  # the workbench, as the browser test starts it
    assert "'.[app]'" in main_command
    assert test_command.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, ".ci/run must run the README's test command verbatim"
    for command in (main_command, test_command):
        assert "-c constraints.txt" in command  # never an unpinned CUDA torch
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert "torch" not in " ".join(
        line for line in (ROOT / "pyproject.toml").read_text().splitlines() if "==" in line
    )


CONSOLE = [
    line[2:].strip()
    for block in _blocks("console")
    for line in block.splitlines()
    if line.startswith("$ audit ")
]


@pytest.mark.parametrize("command", CONSOLE)
def test_readme_console_command_runs(command: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    args = shlex.split(command)[1:]
    if args[0] in ("probe", "bench"):
        args += ["--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_readme_python_example_runs(capsys) -> None:
    code = _blocks("python")[0]
    exec(compile(code, "README.md", "exec"), {})
    first, verdict = capsys.readouterr().out.strip().splitlines()
    layer, auroc = first.split(maxsplit=1)
    assert 0 <= int(layer) < 6 and float(auroc.split()[0]) > 0.6
    assert verdict.split()[0] in ("robust", "fragile", "absent")


def test_readme_tenant_heads_example_runs(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # it saves a head under ./heads
    code = _blocks("python")[1]
    exec(compile(code, "README.md", "exec"), {})
    auroc, labels = capsys.readouterr().out.strip().split(maxsplit=1)
    assert float(auroc) > 0.7
    assert labels == "['positive', 'negative']"
    assert (tmp_path / "heads" / "h_linear" / "head.safetensors").is_file()


def test_readme_screening_example_runs(capsys) -> None:
    code = _blocks("python")[2]
    exec(compile(code, "README.md", "exec"), {})
    first, *results = capsys.readouterr().out.strip().splitlines()
    primary, fpr, n_benign = first.split()
    assert primary.startswith("ensemble") and float(fpr) <= 0.01 and int(n_benign) > 100
    benign, harmful = (line.split()[0] for line in results)
    assert benign in ("allow", "flag") and harmful == "block"
    assert results[1].count("(") > 3 and results[1].endswith(" 1")  # top tokens, one window


def _shell_commands(*prefixes: str) -> list[str]:
    lines = [line.split("#")[0].strip() for b in _blocks("shell") for line in b.splitlines()]
    return [line for line in lines if line.startswith(prefixes)]


@pytest.mark.parametrize(
    "command",
    _shell_commands(
        "audit screen",
        "audit log",
        "audit probe",
        "audit promote",
        "audit bench",
        "audit extract",
        "audit serve",
        "audit tenant",
    ),
)
def test_readme_screening_commands_use_real_options(command: str) -> None:
    import click

    args = shlex.split(command)[1:]
    group = main
    while isinstance(group, click.Group):
        group = group.commands[args.pop(0)]
    options = {opt for param in group.params for opt in param.opts}
    used = {a for a in args if a.startswith("--")}
    assert used <= options, (command, used - options)


def test_readme_audit_spec_validates_and_names_the_plugin_options() -> None:
    from audit.checkpoint.spec import parse_spec

    (spec_text,) = _blocks("toml")
    spec = parse_spec(spec_text, "README.md")
    assert spec.screening is not None and spec.heads is not None
    assert spec.concepts["sentiment"].layers == [4, 5]
    pytest_lines = [
        line.split("#")[0].split()
        for b in _blocks("shell")
        for line in b.splitlines()
        if line.startswith("pytest ")
    ]
    from audit.checkpoint import plugin

    parser = pytest.Parser()
    plugin.pytest_addoption(parser)
    known = {opt for o in parser.getgroup("audit").options for opt in o.names()}
    used = {arg.split("=")[0] for line in pytest_lines for arg in line if arg.startswith("--")}
    assert used and used <= known, used - known
