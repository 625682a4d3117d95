"""Geometry: a seeded UMAP projection of the best layer's activations, coloured by label.

Informational (no threshold): the projection is for a plot, and its figure, the share of each
point's 2-D nearest neighbours that carry its label, says how visibly the classes separate.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from probes.metrics import Estimate
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)

CHECK = "geometry"
TITLE = "Geometry: UMAP of the best layer"
MAX_POINTS = 2000
N_NEIGHBORS = 15
N_EPOCHS = 200  # UMAP's default for small data is 500; 200 already settles a 2-D layout
MIN_SAMPLES = 2 * N_NEIGHBORS
MAX_TEXT_CHARS = 200  # hover text per point: enough to recognise it, small enough for a report


def project(X: np.ndarray, *, seed: int = 0, n_neighbors: int = N_NEIGHBORS) -> np.ndarray:
    """Return a deterministic 2-D UMAP embedding of ``X`` [n, d], shape [n, 2]."""
    import umap  # slow to import (numba): only when a projection is asked for

    # Standardise first: a few residual-stream dimensions with huge magnitudes would otherwise
    # decide every Euclidean distance (the probes standardise for the same reason).
    std = X.std(0)
    Z = (X - X.mean(0)) / np.where(std < 1e-12, 1.0, std)
    # Exact neighbours from scikit-learn (what umap itself does below 4,096 rows) spare umap's
    # parallel neighbour search a numba compile: about a third of the first call's time.
    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(Z).kneighbors(Z)
    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        n_components=2,
        n_epochs=N_EPOCHS,
        random_state=seed,
        n_jobs=1,
        precomputed_knn=(indices, distances.astype(np.float32), None),
    )
    with warnings.catch_warnings():  # umap's notice that a random_state forbids parallelism
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(Z), dtype=np.float64)


def knn_agreement(embedding: np.ndarray, labels: np.ndarray, k: int = N_NEIGHBORS) -> np.ndarray:
    """Return, per point, the share of its ``k`` nearest neighbours (itself excluded) sharing its label."""
    k = min(k, len(labels) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding)
    return (labels[idx[:, 1:]] == labels[:, None]).mean(1)


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1].rstrip() + "…"


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the 2-D projection of the best layer (verdict "info") and its kNN label agreement."""
    labels = np.asarray(ctx.labels).astype(int)
    skip = require_samples(CHECK, TITLE, len(labels), MIN_SAMPLES, "examples")
    if skip is not None:
        return skip
    rng = np.random.default_rng(ctx.seed)
    rows = np.arange(len(labels))
    if len(rows) > MAX_POINTS:
        rows = np.sort(rng.choice(rows, size=MAX_POINTS, replace=False))
    X = np.asarray(ctx.features[ctx.best_hook], dtype=np.float64)[rows]
    y = labels[rows]
    watch = Stopwatch()
    with watch.fit():
        embedding = project(X, seed=ctx.seed)
        agreement = knn_agreement(embedding, y)
        boot = agreement[rng.integers(0, len(y), size=(ctx.n_boot, len(y)))].mean(1)
    shares = np.bincount(y, minlength=2) / len(y)
    figure = Estimate(float(agreement.mean()), *map(float, np.percentile(boot, [2.5, 97.5])))
    return CheckResult(
        CHECK,
        TITLE,
        figure,
        f"{N_NEIGHBORS}-NN label agreement in 2-D at layer {ctx.best_layer}",
        None,
        "info",
        reason=f"chance agreement is {float(shares @ shares):.3f} (the class shares squared)",
        details={
            "hook_name": ctx.best_hook,
            "layer": ctx.best_layer,
            "n_points": len(rows),
            "chance_agreement": float(shares @ shares),
            "silhouette": float(silhouette_score(embedding, y)) if len(set(y)) > 1 else None,
            "x": np.round(embedding[:, 0], 4).tolist(),
            "y": np.round(embedding[:, 1], 4).tolist(),
            "label": y.tolist(),
            "index": rows.tolist(),
            "text": [_shorten(ctx.dataset.texts[i]) for i in rows.tolist()],
        },
        fit_seconds=watch.fit_seconds,
    )
