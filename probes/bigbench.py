"""BIG-bench task inputs, read from the ``bigbench==1.0.0`` source archive on PyPI.

BIG-bench cannot be pip-installed for its files (its metadata declares a direct URL dependency and
its dependencies are heavy), so its source archive (358 MB) is downloaded once from the package
registry to ``archive_path()`` (``$AUDIT_BIGBENCH_ARCHIVE`` if set, else
``<audit_home()>/data/bigbench-1.0.0.tar.gz``) and checked against its pinned sha256.
``read_tasks`` reads the tasks' ``task.json`` files straight from the archive and caches their
inputs in a small JSON extract under ``<audit_home()>/data/``, so the archive is read once per
machine and task list; later calls, in any process, read only the extract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import platformdirs

from probes.atomic import atomic_write, sha256_file
from probes.bundled import _exclusive_lock
from probes.errors import (
    CorruptArtifactError,
    InvalidInputError,
    MissingArchiveError,
    UnknownNameError,
)
from probes.home import APP_NAME, audit_home

logger = logging.getLogger(__name__)

BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
BIGBENCH_URL = (
    "https://files.pythonhosted.org/packages/95/f8/"
    "c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/bigbench-1.0.0.tar.gz"
)
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
ARCHIVE_ENV = "AUDIT_BIGBENCH_ARCHIVE"
TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks/"  # <task>[/<subtask>]/task.json inside
_EXTRACT_SCHEMA = 1  # bump when the extract holds something different, so old ones are rebuilt
_TIMEOUT_S = 60  # seconds without data before a download gives up


def archive_path() -> Path:
    """Return where the archive is kept: ``$AUDIT_BIGBENCH_ARCHIVE``, else the user cache folder.

    The archive is a verified copy of a public download, shared by every AUDIT_HOME of the user
    (test sessions included); only the small extract lives under AUDIT_HOME.
    """
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME)) / ARCHIVE_NAME


def _by_hand(path: Path) -> str:
    return (
        f"Download {BIGBENCH_URL} (sha256 {BIGBENCH_SHA256}) by hand and put it at {path}, "
        f"or point ${ARCHIVE_ENV} at a copy."
    )


def ensure_archive(progress: bool = True) -> Path:
    """Return the path of the verified BIG-bench archive, downloading it first when absent.

    The download goes to a temporary sibling file, is checked against ``BIGBENCH_SHA256`` and is
    renamed into place; a file lock keeps two processes from downloading it at once. A present
    archive with another sha256 is refused (delete it to download it again).
    """
    path = archive_path()
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _exclusive_lock(path.parent / f".{path.name}.lock", "downloading BIG-bench"):
                if not path.is_file():  # another process may have downloaded it meanwhile
                    _download(path, progress=progress)
                    return path
        except OSError as exc:  # URLError, HTTPError, timeouts and unwritable folders alike
            raise MissingArchiveError(
                BIGBENCH_REQUIREMENT,
                f"The BIG-bench source archive ({BIGBENCH_REQUIREMENT}) is not at {path} and "
                f"could not be downloaded ({exc}). {_by_hand(path)}",
            ) from exc
    digest = sha256_file(path)
    if digest != BIGBENCH_SHA256:
        raise CorruptArtifactError(
            f"{path} is not the {BIGBENCH_REQUIREMENT} source archive: its sha256 is {digest}, "
            f"expected {BIGBENCH_SHA256}. Delete it (it is then downloaded again on first use) "
            f"or replace it with the right file. {_by_hand(path)}"
        )
    return path


def _download(path: Path, *, progress: bool) -> None:
    """Download the archive to ``path`` through a temporary file, checking its sha256."""
    from tqdm.auto import tqdm

    # Only this process holds the lock, so leftovers of killed downloads are safe to delete.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        logger.info("Removing the leftover %s", stale)
        stale.unlink(missing_ok=True)
    logger.info("Downloading %s to %s", BIGBENCH_URL, path)

    def fetch(tmp: str) -> None:
        digest = hashlib.sha256()
        with (
            urllib.request.urlopen(BIGBENCH_URL, timeout=_TIMEOUT_S) as response,
            open(tmp, "wb") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(
                total=total, unit="B", unit_scale=True, desc=ARCHIVE_NAME, disable=not progress
            )
            with bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != BIGBENCH_SHA256:
            raise CorruptArtifactError(
                f"The download of {BIGBENCH_URL} has sha256 {digest.hexdigest()}, expected "
                f"{BIGBENCH_SHA256}; it was not kept. Try again later. {_by_hand(path)}"
            )

    atomic_write(path, fetch)


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    bad = [t for t in names if not isinstance(t, str) or not t.strip("/ ") or ".." in t]
    if bad or not names:
        raise InvalidInputError(
            "read_tasks needs BIG-bench task names such as 'social_iqa' (or 'task/subtask'). "
            f"Got {bad[0] if bad else names!r} instead."
        )
    return list(dict.fromkeys(t.strip("/ ") for t in names))


def extract_path(tasks: Sequence[str]) -> Path:
    """Return the extract file of ``tasks``: named by a hash of the task list and the archive."""
    key = json.dumps(
        {
            "schema": _EXTRACT_SCHEMA,
            "archive": BIGBENCH_SHA256,
            "tasks": sorted(_check_tasks(tasks)),
        }
    )
    short = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return audit_home() / "data" / f"bigbench-extract-{short}.json"


def read_tasks(tasks: Sequence[str], *, progress: bool = True) -> dict[str, list[str]]:
    """Return each task's example inputs (whitespace-trimmed, empties dropped, repeats removed).

    A task name is a folder of ``benchmark_tasks`` (``"social_iqa"``) or a subtask
    (``"fact_checker/politifact"``); a task whose own ``task.json`` holds no examples gets those of
    its subtasks, in name order. The result is cached in ``extract_path(tasks)``; a missing or
    unreadable extract is (re)built from the archive, downloading it first if needed.
    """
    names = _check_tasks(tasks)
    path = extract_path(names)
    cached = _read_extract(path, names)
    if cached is not None:
        return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(path.parent / f".{path.name}.lock", "extracting BIG-bench tasks"):
        cached = _read_extract(path, names)  # another process may have written it meanwhile
        if cached is not None:
            return cached
        archive = ensure_archive(progress=progress)
        inputs = _read_archive(archive, names)
        document = {"archive_sha256": BIGBENCH_SHA256, "schema": _EXTRACT_SCHEMA, "tasks": inputs}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(document), encoding="utf-8"))
        logger.info("Wrote the BIG-bench extract %s (%d tasks)", path, len(inputs))
    return inputs


def _read_extract(path: Path, names: list[str]) -> dict[str, list[str]] | None:
    """Return the inputs cached in ``path``, or None when it is absent or not a valid extract."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        tasks = document["tasks"]
        ok = (
            document["archive_sha256"] == BIGBENCH_SHA256
            and document["schema"] == _EXTRACT_SCHEMA
            and all(isinstance(tasks[n], list) for n in names)
            and all(isinstance(t, str) for n in names for t in tasks[n])
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("The BIG-bench extract %s is unreadable (%s); rebuilding it.", path, exc)
        return None
    if not ok:
        logger.warning("The BIG-bench extract %s does not match; rebuilding it.", path)
        return None
    return {n: list(tasks[n]) for n in names}


def _read_archive(archive: Path, names: list[str]) -> dict[str, list[str]]:
    """Return the inputs of ``names`` read from the archive's ``task.json`` files (one pass)."""
    wanted = set(names)
    own: dict[str, list[Any]] = {}
    subtasks: dict[str, dict[str, list[Any]]] = defaultdict(dict)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if not (member.isfile() and name.startswith(TASKS_DIR)):
                    continue
                if not name.endswith("/task.json"):
                    continue
                folder = name[len(TASKS_DIR) : -len("/task.json")]
                task = folder.split("/")[0]
                if folder not in wanted and task not in wanted:
                    continue
                handle = tar.extractfile(member)
                document = json.load(handle) if handle is not None else {}
                examples = document.get("examples") if isinstance(document, dict) else None
                examples = examples if isinstance(examples, list) else []
                if folder in wanted:
                    own[folder] = examples
                if folder != task and task in wanted:
                    subtasks[task][folder] = examples
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise CorruptArtifactError(
            f"{archive} cannot be read as the {BIGBENCH_REQUIREMENT} source archive ({exc}). "
            f"Delete it (it is then downloaded again on first use). {_by_hand(archive)}"
        ) from exc
    inputs = {}
    for name in names:
        examples = own.get(name) or [
            e for sub in sorted(subtasks.get(name, {})) for e in subtasks[name][sub]
        ]
        texts = [e.get("input") for e in examples if isinstance(e, dict)]
        inputs[name] = list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str)))
        inputs[name] = [t for t in inputs[name] if t]
        if not inputs[name]:
            raise UnknownNameError(
                f"BIG-bench has no task {name!r} with example inputs (expected "
                f"{TASKS_DIR}{name}/task.json in {archive}). Check the task name."
            )
    return inputs
