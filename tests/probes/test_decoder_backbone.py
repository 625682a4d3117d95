"""The bundled decoder (SmolLM2-135M) through the same extraction path: slow, small."""

from __future__ import annotations

import numpy as np
import pytest

from probes import Backbone

pytestmark = pytest.mark.slow

TEXTS = [
    "The city of Paris is in France.",
    "No.",
    "I really did not enjoy the second half of that film.",
]


def test_decoder_plain_path_equals_bridge_and_ignores_padding(decoder: Backbone) -> None:
    assert (decoder.n_layers, decoder.d_model) == (30, 576)
    hooks = ["blocks.0.hook_resid_post", "blocks.14.hook_resid_post", "blocks.29.hook_resid_post"]
    batch = decoder.tokenize(TEXTS)
    plain = decoder._forward_plain(batch.input_ids, batch.attention_mask, hooks)
    bridge = decoder._forward_bridge(batch.input_ids, batch.attention_mask, hooks)
    for hook in hooks:
        for i, n in enumerate(batch.lengths):
            scale = float(np.abs(bridge[hook][i, :n].numpy()).max())
            np.testing.assert_allclose(
                plain[hook][i, :n].numpy(), bridge[hook][i, :n].numpy(), atol=1e-4 * max(scale, 1.0)
            )
    together = decoder.extract(TEXTS, hooks, ("mean", "last"), progress=False)
    for i, text in enumerate(TEXTS):
        alone = decoder.extract([text], hooks, ("mean", "last"), progress=False)
        for key, value in alone.pooled.items():
            scale = max(float(np.abs(value).max()), 1.0)
            np.testing.assert_allclose(value[0], together.pooled[key][i], atol=1e-5 * scale)
