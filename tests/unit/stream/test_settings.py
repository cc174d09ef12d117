import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from streamrec.stream.settings import Settings, settings_markdown_table
from tests.paths import REPO

README = REPO / "README.md"


def test_environment_variables_configure_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TOP_K", "7")
    monkeypatch.setenv("STREAMREC_EVENT_WEIGHTS", json.dumps({"view": 1, "click": 1, "cart": 3, "buy": 9}))
    monkeypatch.setenv("STREAMREC_RUNTIME", "faust")
    settings = Settings()
    assert settings.top_k == 7
    assert settings.event_weights["buy"] == 9
    assert settings.runtime == "faust"
    assert Settings(top_k=3).top_k == 3  # explicit values (the CLI's) win over the environment


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": 0},
        {"event_weights": {"view": 1.0}},
        {"event_weights": {"view": -1.0, "click": 1.0, "cart": 1.0, "buy": 1.0}},
        {"runtime": "spark"},
        {"auto_offset_reset": "middle"},
    ],
)
def test_invalid_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_every_setting_is_documented_and_the_readme_table_is_current() -> None:
    from streamrec.model.config import TrainConfig

    assert all(field.description for field in Settings.model_fields.values())
    assert all(field.description for field in TrainConfig.model_fields.values())
    text = README.read_text()
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)].strip()
    assert table == settings_markdown_table(), "regenerate with `streamrec settings --markdown`"


def test_serving_defaults_match_the_training_and_index_defaults() -> None:
    """A serving setting and its training twin start equal, so a model trained with the defaults is served as it
    was trained; and reading the settings loads neither FAISS nor torch (the CLI checks its inputs first)."""
    from streamrec.index.params import DEFAULT_EF_SEARCH, DEFAULT_N_CANDIDATES
    from streamrec.model.config import TrainConfig

    settings, config = Settings(), TrainConfig()
    assert settings.n_candidates == DEFAULT_N_CANDIDATES == config.n_candidates
    assert settings.hnsw_ef_search == DEFAULT_EF_SEARCH and settings.ivf_nprobe is None is config.nprobe
    assert settings.event_weights == config.event_weights and settings.interest_half_life_s == config.half_life_s
    assert settings.max_recent_items == config.max_len
    probe = "import sys, streamrec.stream.settings; print('torch' in sys.modules, 'faiss' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.split() == ["False", "False"]
