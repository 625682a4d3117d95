"""Backbone page: what the session's frozen backbone is, the hooks it reads, and switching it."""

import streamlit as st

from app_pages.common import (
    BACKBONE_KEY,
    backbone_spec,
    bundled_aliases,
    current_backbone,
    load_backbone,
)

OTHER = "Other: a local folder or Hugging Face name"

st.title("Backbone")
backbone = current_backbone()
if backbone is not None:
    info = backbone.info()
    st.subheader(info["name"])
    st.markdown(f"Fingerprint `{info['fingerprint']}`")
    st.caption(
        f"{info['architecture']} on {info['device']}"
        + (f", from {info['folder']}" if info["folder"] else "")
    )
    layers, width, context, cut = st.columns(4)
    layers.metric("Layers", info["n_layers"])
    width.metric("d_model", info["d_model"])
    context.metric("Context (tokens)", info["n_ctx"])
    cut.metric("max_length", info["max_length"])
    st.markdown("**Hooks read** (the residual stream after each block, what probes are fitted on)")
    st.dataframe(
        [{"layer": layer, "hook_name": hook} for layer, hook in enumerate(backbone.resid_hooks())],
        hide_index=True,
    )
    with st.expander(f"All {len(backbone.hook_names)} hook names of the bridge"):
        st.code("\n".join(backbone.hook_names), language=None)

st.header("Switch backbone")
spec = backbone_spec()
aliases = bundled_aliases()
choice = st.selectbox(
    "Backbone",
    [*aliases, OTHER],
    index=aliases.index(spec) if spec in aliases else len(aliases),
    help="smollm2 converts its bundled GGUF once on first load, which takes a while.",
)
if choice == OTHER:
    wanted = st.text_input(
        "Folder or model name",
        value="" if spec in aliases else spec,
        placeholder="/path/to/hf-model-folder or gpt2",
    ).strip()
else:
    wanted = choice
if st.button("Load backbone", type="primary"):
    if not wanted:
        st.error("Type a local model folder or a Hugging Face model name first.")
    else:
        try:
            load_backbone(wanted)
        # Booting an arbitrary model can fail anywhere in transformers or the bridge (an
        # unsupported architecture, a broken config): whatever it is, the page says why.
        except Exception as exc:  # noqa: BLE001
            st.error(f"Could not load backbone {wanted!r}: {exc} The session keeps {spec!r}.")
        else:
            st.session_state[BACKBONE_KEY] = wanted
            st.rerun()
