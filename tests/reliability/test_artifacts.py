"""Saved probes, tenant heads, screen banks and baselines load only as safetensors + valid JSON.

Each artifact kind is saved for real (fitted on MiniLM activations of a few real texts), then
tampered with: its weights replaced by a pickle (whose ``__reduce__`` would create a marker file)
or a ``torch.save`` archive, a tensor of the wrong shape or dtype, a tensor missing or added, a
non-finite tensor, a JSON sidecar with a wrong type, a missing field, a NaN or an out-of-range
value, and truncated files. Every load must be refused with the project's error, naming the file
and the bad tensor or field, and nothing must be unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load
from safetensors.numpy import save_file as np_save
from safetensors.torch import load_file as torch_load
from safetensors.torch import save_file as torch_save

from audit.checkpoint.baseline import (
    BASELINE_FILE,
    BaselineRecord,
    ConceptBaseline,
    load_baseline,
)
from audit.checkpoint.spec import AuditSpec, ConceptSpec, spec_digest
from audit.screening.screens import SpanRule
from audit.screening.storage import load_bank, save_bank
from audit.tenants.heads import HeadSpec, load_head, save_head, train_head
from probes import ActivationStore, Backbone
from probes.artifacts import ProbeMeta, load_probe, save_probe
from probes.errors import CorruptArtifactError, ProbesError
from probes.estimators import LogisticProbe, MassMeanProbe
from probes.hooks import resid_post

N_TEXTS = 80
LAYER = 3
REFUSED: Counter[str] = Counter()
TRIED: Counter[str] = Counter()


class _Marker:
    """Unpickling this creates the file ``path``: proof that a loader ran pickled code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.path,))


@dataclass(frozen=True)
class Artifact:
    """A saved artifact: its folder, weights and JSON files, and how to load it."""

    kind: str
    folder: Path
    weights: Path
    meta: Path
    load: Callable[[], object]
    torch_tensors: bool  # saved with safetensors.torch (heads) rather than safetensors.numpy


@pytest.fixture(scope="module", autouse=True)
def counts() -> Iterator[None]:
    """Print how many tamperings were tried and refused once the module has run."""
    started = time.perf_counter()
    yield
    if TRIED:
        print(
            f"\nartifact tampering: {sum(REFUSED.values())}/{sum(TRIED.values())} refused "
            f"clearly in {time.perf_counter() - started:.1f} s; by kind {dict(sorted(TRIED.items()))}"
        )


# ------------------------------------------------------------------------------- originals
@pytest.fixture(scope="module")
def rows(sentiment_small) -> tuple[list[str], list[str], np.ndarray]:
    texts = list(sentiment_small.texts[:N_TEXTS])
    labels = [sentiment_small.label_names[i] for i in sentiment_small.labels[:N_TEXTS]]
    return texts, labels, np.asarray(sentiment_small.labels[:N_TEXTS])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ActivationStore:
    return ActivationStore(tmp_path_factory.mktemp("artifact-store"))


@pytest.fixture(scope="module")
def originals(
    tmp_path_factory: pytest.TempPathFactory,
    backbone: Backbone,
    store: ActivationStore,
    rows: tuple[list[str], list[str], np.ndarray],
    screen_bank: Any,
) -> dict[str, Artifact]:
    """Save one real artifact of each kind; return them by kind."""
    root = tmp_path_factory.mktemp("artifacts")
    texts, labels, y = rows
    hook = resid_post(LAYER)
    x = store.get(backbone, texts, [hook], ("mean",), progress=False).pooled[(hook, "mean")]
    out: dict[str, Artifact] = {}
    for kind, cls in (("probe_logistic", LogisticProbe), ("probe_mass_mean", MassMeanProbe)):
        meta = ProbeMeta(
            kind="logistic" if cls is LogisticProbe else "mass_mean",
            concept="sentiment",
            dataset="rotten_tomatoes",
            layer=LAYER,
            hook_name=hook,
            pooling="mean",
            d_model=backbone.d_model,
            label_names=["negative", "positive"],
            backbone=backbone.name,
            fingerprint=backbone.fingerprint,
        )
        meta_path = save_probe(cls().fit(x, y), root / kind / "probe", meta)
        out[kind] = Artifact(
            kind,
            meta_path.parent,
            meta_path.with_suffix(".safetensors"),
            meta_path,
            partial(load_probe, meta_path, fingerprint=backbone.fingerprint),
            False,
        )
    specs = {
        "head_linear": HeadSpec("linear", layer=LAYER, epochs=3),
        "head_mlp": HeadSpec("mlp", layer=LAYER, hidden=16, epochs=3),
        "head_regression": HeadSpec("linear", layer=LAYER, task="regression", epochs=3),
        "head_blocks": HeadSpec("blocks", k=1, epochs=1),
    }
    for kind, spec in specs.items():
        head_labels: list[Any] = (
            [float(len(t)) for t in texts] if spec.task == "regression" else labels
        )
        head = train_head(
            backbone,
            store,
            texts,
            head_labels,
            spec,
            tenant_id="t_rel",
            head_id=kind,
            progress=False,
        )
        folder = save_head(head, root / kind)
        out[kind] = Artifact(
            kind,
            folder,
            folder / "head.safetensors",
            folder / "head.json",
            partial(load_head, folder, backbone),
            True,
        )
    primary = screen_bank.screen(screen_bank.primary)
    span = SpanRule(16, primary.block, primary.flag, 10, 5)
    folder = save_bank(replace(screen_bank, span=span), root / "screen_bank")
    out["screen_bank"] = Artifact(
        "screen_bank",
        folder,
        folder / "bank.safetensors",
        folder / "bank.json",
        partial(load_bank, folder, backbone),
        False,
    )
    out["baseline"] = _baseline(root / "baseline", backbone, out["probe_logistic"])
    for artifact in out.values():
        artifact.load()  # each loads intact before it is tampered with
    return out


def _baseline(folder: Path, backbone: Backbone, probe: Artifact) -> Artifact:
    spec = AuditSpec(
        schema_version=1, n_samples=N_TEXTS, concepts={"sentiment": ConceptSpec(layers=[LAYER])}
    )
    probes = folder / "probes"
    probes.mkdir(parents=True)
    for source in (probe.weights, probe.meta):
        shutil.copyfile(source, probes / f"sentiment-L{LAYER}{source.suffix}")
    record = BaselineRecord(
        spec_name=spec.name,
        spec_digest=spec_digest(spec),
        backbone=backbone.name,
        fingerprint=backbone.fingerprint,
        concepts={
            "sentiment": ConceptBaseline(
                dataset=spec.dataset("sentiment"),
                dataset_hash="h",
                n_samples=N_TEXTS,
                requested=spec.samples("sentiment"),
                auroc={str(LAYER): 0.81},
            )
        },
    )
    (folder / BASELINE_FILE).write_text(json.dumps(record.model_dump(mode="json"), indent=1))
    return Artifact(
        "baseline",
        folder,
        probes / f"sentiment-L{LAYER}.safetensors",
        folder / BASELINE_FILE,
        lambda: load_baseline(folder, spec),
        False,
    )


@pytest.fixture()
def artifact(
    request: pytest.FixtureRequest, originals: dict[str, Artifact], tmp_path: Path
) -> Artifact:
    """Return a fresh copy of the artifact named by the test's ``kind`` parameter."""
    original = originals[request.param]
    folder = tmp_path / original.kind
    shutil.copytree(original.folder, folder)

    def moved(path: Path) -> Path:
        return folder / path.relative_to(original.folder)

    if original.kind.startswith("probe"):
        weights, meta = moved(original.weights), moved(original.meta)
        load: Callable[[], object] = lambda: load_probe(meta, fingerprint=None)  # noqa: E731
    elif original.kind.startswith("head"):
        weights, meta = moved(original.weights), moved(original.meta)
        backbone = request.getfixturevalue("backbone")
        load = lambda: load_head(folder, backbone)  # noqa: E731
    elif original.kind == "screen_bank":
        weights, meta = moved(original.weights), moved(original.meta)
        backbone = request.getfixturevalue("backbone")
        load = lambda: load_bank(folder, backbone)  # noqa: E731
    else:
        weights, meta = moved(original.weights), moved(original.meta)
        spec = AuditSpec(
            schema_version=1, n_samples=N_TEXTS, concepts={"sentiment": ConceptSpec(layers=[LAYER])}
        )
        load = lambda: load_baseline(folder, spec)  # noqa: E731
    return Artifact(original.kind, folder, weights, meta, load, original.torch_tensors)


def _refused(artifact: Artifact, case: str, *needles: str) -> str:
    """Load ``artifact`` and return the refusal message, asserting it names each needle."""
    TRIED[f"{artifact.kind}:{case}"] += 1
    with pytest.raises(ProbesError) as caught:
        artifact.load()
    message = str(caught.value)
    assert isinstance(caught.value, CorruptArtifactError), (type(caught.value), message)
    for needle in needles:
        assert needle in message, (needle, message)
    assert "Traceback" not in message and len(message) < 1500, message
    REFUSED[f"{artifact.kind}:{case}"] += 1
    return message


def _tensors(artifact: Artifact) -> dict[str, Any]:
    """Return private copies of the weights (a loaded tensor may map the file being rewritten)."""
    if artifact.torch_tensors:
        return {k: v.clone() for k, v in torch_load(str(artifact.weights)).items()}
    return {k: v.copy() for k, v in np_load(str(artifact.weights)).items()}


def _save(artifact: Artifact, tensors: dict[str, Any]) -> None:
    (torch_save if artifact.torch_tensors else np_save)(tensors, str(artifact.weights))


def _first_float(tensors: dict[str, Any]) -> str:
    return sorted(n for n, t in tensors.items() if "float" in str(t.dtype) and t.ndim >= 1)[0]


WEIGHT_KINDS = [
    "probe_logistic",
    "probe_mass_mean",
    "head_linear",
    "head_mlp",
    "head_regression",
    "head_blocks",
    "screen_bank",
    "baseline",
]


# ------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("artifact", WEIGHT_KINDS, indirect=True)
@pytest.mark.parametrize("how", ["pickle", "torch_save"])
def test_pickled_weights_are_refused_unexecuted(
    artifact: Artifact, how: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pickle-ran"
    payload = {"weights": _Marker(str(marker)), **_tensors(artifact)}
    if how == "pickle":
        artifact.weights.write_bytes(pickle.dumps(payload))
        needle = "pickle"
    else:
        torch.save(payload, artifact.weights)
        needle = "torch.save"
    _refused(artifact, how, str(artifact.weights), needle, "safetensors")
    assert not marker.exists(), "a loader unpickled the weights file"


@pytest.mark.parametrize("artifact", WEIGHT_KINDS, indirect=True)
@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_weights_are_refused(artifact: Artifact, cut: str) -> None:
    data = artifact.weights.read_bytes()
    artifact.weights.write_bytes(data[:5] if cut == "header" else data[: len(data) - 40])
    _refused(artifact, f"truncated_{cut}", str(artifact.weights), "truncated")


@pytest.mark.parametrize("artifact", WEIGHT_KINDS, indirect=True)
@pytest.mark.parametrize(
    "change", ["shape", "dtype_float", "dtype_int32", "missing", "extra", "nan"]
)
def test_wrong_tensors_are_refused_naming_the_tensor(artifact: Artifact, change: str) -> None:
    tensors = _tensors(artifact)
    name = _first_float(tensors)
    t = tensors[name]
    lib: Any = torch if artifact.torch_tensors else np
    if change == "shape":
        tensors[name] = t[..., :-1].clone() if artifact.torch_tensors else t[..., :-1].copy()
        needles = [repr(name), "shape"]
    elif change.startswith("dtype"):
        want = "float32" if "float32" in str(t.dtype) else "float64"
        other = (
            "int32" if change == "dtype_int32" else ("float64" if want == "float32" else "float32")
        )
        if artifact.torch_tensors:
            tensors[name] = t.to(getattr(torch, other))
        else:
            tensors[name] = t.astype(other)
        needles = [repr(name), want, other]
    elif change == "missing":
        del tensors[name]
        needles = ["missing", name]
    elif change == "extra":
        tensors["smuggled"] = lib.zeros(3) if not artifact.torch_tensors else torch.zeros(3)
        needles = ["unexpected", "smuggled"]
    else:
        bad = t.clone() if artifact.torch_tensors else t.copy()
        bad.reshape(-1)[0] = float("nan")
        tensors[name] = bad
        needles = [repr(name), "NaN"]
    _save(artifact, tensors)
    _refused(artifact, change, str(artifact.weights), *needles)


# ------------------------------------------------------------------------------ JSON
def _edit(meta: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    body = json.loads(meta.read_text(encoding="utf-8"))
    edit(body)
    meta.write_text(json.dumps(body), encoding="utf-8")  # json.dumps writes NaN as NaN


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return edit


_DELETE = object()
NAN = float("nan")

# (kind, case, field path to edit, new value, words the refusal must hold)
JSON_CASES: list[tuple[str, str, str, Any, tuple[str, ...]]] = [
    ("probe_logistic", "wrong_type", "d_model", "wide", ("d_model",)),
    ("probe_logistic", "missing", "label_names", _DELETE, ("label_names", "required")),
    ("probe_logistic", "bad_kind", "kind", "svm", ("kind",)),
    ("probe_logistic", "nan", "params.C", NAN, ("params.C",)),
    ("probe_logistic", "negative", "layer", -2, ("layer",)),
    ("probe_mass_mean", "one_label", "label_names", ["only"], ("label_names",)),
    ("head_linear", "wrong_type", "n_outputs", "two", ("n_outputs",)),
    ("head_linear", "missing", "d_model", _DELETE, ("d_model", "required")),
    ("head_linear", "bad_kind", "kind", "transformer", ("kind",)),
    ("head_linear", "out_of_range", "layer", 17, ("layer",)),
    ("head_linear", "wrong_hook", "input_hook", resid_post(1), ("input_hook",)),
    ("head_linear", "labels", "label_names", ["a", "a"], ("label_names",)),
    ("head_mlp", "zero_hidden", "hidden", 0, ("hidden",)),
    ("head_regression", "nan", "target_scale", NAN, ("target_scale",)),
    ("head_regression", "negative", "target_scale", -1.0, ("target_scale",)),
    ("head_blocks", "out_of_range", "k", 9, ("k",)),
    ("screen_bank", "wrong_type", "d_model", "384", ("d_model",)),
    ("screen_bank", "missing", "screens.0.flag", _DELETE, ("screens.0.flag", "required")),
    ("screen_bank", "nan", "screens.0.block.value", NAN, ("screens.0.block.value",)),
    ("screen_bank", "prob_1_7", "screens.1.flag.value", 1.7, ("screens.1.flag.value", "1.7")),
    ("screen_bank", "negative", "screens.0.block.value", -0.1, ("screens.0.block.value",)),
    ("screen_bank", "fpr", "screens.0.block.target_fpr", 1.5, ("target_fpr",)),
    ("screen_bank", "order", "screens.0.flag.value", 0.999999, ("flag threshold",)),
    ("screen_bank", "counts", "screens.0.flag.n_false_positive", 10**6, ("n_false_positive",)),
    ("screen_bank", "span", "span.block.value", 1.7, ("span.block.value",)),
    ("screen_bank", "calibration", "screens.0.calibration.method", "magic", ("method",)),
    ("screen_bank", "primary", "primary", "nope", ("primary",)),
    ("screen_bank", "extra", "screens.0.surprise", 1, ("surprise",)),
    ("screen_bank", "training", "training.target_block_fpr", NAN, ("target_block_fpr",)),
    ("baseline", "wrong_type", "concepts.sentiment.n_samples", "many", ("n_samples",)),
    ("baseline", "missing", "fingerprint", _DELETE, ("fingerprint", "required")),
    ("baseline", "nan", f"concepts.sentiment.auroc.{LAYER}", NAN, ("auroc",)),
    ("baseline", "out_of_range", f"concepts.sentiment.auroc.{LAYER}", 1.7, ("auroc", "1.7")),
]


@pytest.mark.parametrize(
    ("artifact", "case", "path", "value", "needles"),
    JSON_CASES,
    indirect=["artifact"],
    ids=[f"{c[0]}-{c[1]}" for c in JSON_CASES],
)
def test_bad_json_sidecars_are_refused_naming_the_field(
    artifact: Artifact, case: str, path: str, value: Any, needles: tuple[str, ...]
) -> None:
    _edit(artifact.meta, _set(path, value))
    _refused(artifact, f"json_{case}", str(artifact.meta), *needles)


@pytest.mark.parametrize("artifact", WEIGHT_KINDS, indirect=True)
def test_truncated_or_garbled_json_is_refused(artifact: Artifact) -> None:
    text = artifact.meta.read_bytes()
    artifact.meta.write_bytes(text[: len(text) // 2])
    _refused(artifact, "json_truncated", str(artifact.meta))
    artifact.meta.write_bytes(b"\xff\xfe" + text)
    _refused(artifact, "json_binary", str(artifact.meta))


@pytest.mark.parametrize("artifact", ["probe_logistic"], indirect=True)
def test_probe_files_with_pickle_suffixes_are_never_opened(
    artifact: Artifact, tmp_path: Path
) -> None:
    marker = tmp_path / "pickle-ran"
    for suffix in (".pkl", ".pt", ".bin"):
        path = artifact.folder / f"probe{suffix}"
        path.write_bytes(pickle.dumps(_Marker(str(marker))))
        with pytest.raises(ProbesError, match="never"):
            load_probe(path)
    assert not marker.exists()
