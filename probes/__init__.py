"""Probing library: backbone loading, activation extraction and store, concept datasets, probes.

Usable on its own, no server needed::

    from probes import Backbone, ActivationStore, load_dataset, probe_dataset
    backbone = Backbone.load()                  # the embedded all-MiniLM-L6-v2
    result = probe_dataset(backbone, load_dataset("sentiment", max_samples=1000))
    print(result.sweep.best("logistic"))
"""

from probes.artifacts import ProbeMeta, load_probe, save_probe
from probes.backbone import Backbone, Extraction, RaggedTokens, TokenBatch
from probes.datasets import (
    CONCEPTS,
    ConceptDataset,
    Split,
    list_datasets,
    load_concept,
    load_dataset,
    load_jsonl,
)
from probes.errors import (
    CorruptArtifactError,
    FingerprintMismatchError,
    InvalidInputError,
    MissingPackageError,
    ProbesError,
    UnknownNameError,
)
from probes.estimators import LogisticProbe, MassMeanProbe
from probes.hooks import resid_post
from probes.metrics import Estimate, bootstrap_accuracy, bootstrap_auroc
from probes.pooling import POOLINGS
from probes.run import DatasetProbeResult, probe_dataset
from probes.store import ActivationStore
from probes.sweep import LayerScore, SweepResult, sweep_layers

__all__ = [
    "CONCEPTS",
    "POOLINGS",
    "ActivationStore",
    "Backbone",
    "ConceptDataset",
    "CorruptArtifactError",
    "DatasetProbeResult",
    "Estimate",
    "Extraction",
    "FingerprintMismatchError",
    "InvalidInputError",
    "LayerScore",
    "LogisticProbe",
    "MassMeanProbe",
    "MissingPackageError",
    "ProbeMeta",
    "ProbesError",
    "RaggedTokens",
    "Split",
    "SweepResult",
    "TokenBatch",
    "UnknownNameError",
    "bootstrap_accuracy",
    "bootstrap_auroc",
    "list_datasets",
    "load_concept",
    "load_dataset",
    "load_jsonl",
    "load_probe",
    "probe_dataset",
    "resid_post",
    "save_probe",
    "sweep_layers",
]
