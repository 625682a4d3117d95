"""The backbone page: the session's backbone described, and switching it safely."""

from __future__ import annotations

from app_pages.common import BACKBONE_KEY
from probes import Backbone
from probes.bundled import minilm_folder

OTHER = "Other: a local folder or Hugging Face name"


def page_text(app) -> str:
    """Return every markdown, caption, subheader and code block the page shows, joined."""
    parts = [
        e.value for kind in ("markdown", "caption", "subheader", "code") for e in app.get(kind)
    ]
    return "\n".join(str(p) for p in parts)


def test_default_backbone_is_described(open_page) -> None:
    app = open_page("backbone")
    assert not app.exception, app.exception
    assert app.title[0].value == "Backbone"
    minilm = Backbone.load("minilm")
    text = page_text(app)
    assert minilm.fingerprint in text
    assert minilm.architecture in text
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Layers"] == str(minilm.n_layers) and metrics["d_model"] == str(minilm.d_model)
    hooks = app.dataframe[0].value
    assert list(hooks["hook_name"]) == minilm.resid_hooks()
    assert app.selectbox[0].value == "minilm"


def test_bad_folder_shows_error_and_keeps_minilm(open_page, tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    app = open_page("backbone")
    app.selectbox[0].select(OTHER).run()
    app.text_input[0].input(str(missing)).run()
    app.button[0].click().run()
    assert not app.exception, app.exception
    assert len(app.error) == 1
    assert str(missing) in app.error[0].value and "minilm" in app.error[0].value
    assert "Traceback" not in app.error[0].value
    assert (
        "backbone_spec" not in app.session_state or app.session_state["backbone_spec"] == "minilm"
    )
    assert Backbone.load("minilm").fingerprint in page_text(app)


def test_loading_a_model_folder_switches_the_session(open_page) -> None:
    folder = str(minilm_folder())
    app = open_page("backbone")
    app.selectbox[0].select(OTHER).run()
    app.text_input[0].input(folder).run()
    app.button[0].click().run()
    assert not app.exception, app.exception
    assert not app.error
    assert app.session_state[BACKBONE_KEY] == folder
    assert app.subheader[0].value == str(minilm_folder().resolve())
    assert app.selectbox[0].value == OTHER and app.text_input[0].value == folder
