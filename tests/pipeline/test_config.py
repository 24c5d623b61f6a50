import pytest

from pipeline.config import ConfigError, KeyframeSettings, ModelSpec, load_config


def test_profiles_name_every_role():
    for profile in ("tiny", "cpu", "gpu"):
        cfg = load_config("in", "out", profile)
        assert {cfg.models.asr.ref, cfg.models.caption.ref, cfg.models.embedding.ref, cfg.models.summary.ref}
        assert cfg.profile == profile


def test_unknown_profile_is_one_line():
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config("in", "out", "huge")


def test_yaml_overrides_models_and_keyframes(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "models:\n  summary: {ref: my-model, endpoint: 'http://127.0.0.1:8000/v1'}\n"
        "keyframes: {max_keyframes: 5}\nshard_size: 3\n"
    )
    cfg = load_config("in", "out", "tiny", str(f))
    assert cfg.models.summary.endpoint == "http://127.0.0.1:8000/v1"
    assert cfg.models.summary.ref == "my-model"
    assert cfg.models.asr.ref == "tiny:whisper"
    assert cfg.keyframes.max_keyframes == 5 and cfg.shard_size == 3


def test_fingerprint_follows_models_and_settings(tmp_path):
    a = load_config("in", "out", "tiny")
    b = load_config("other-in", "other-out", "tiny", force=True)
    f = tmp_path / "c.yaml"
    f.write_text("keyframes: {scene_threshold: 0.5}\n")
    c = load_config("in", "out", "tiny", str(f))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert a.fingerprint() != load_config("in", "out", "cpu").fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        ("keyframes: {max_keyframes: 0}\n", "max_keyframes"),
        ("bogus: 1\n", "unknown key"),
        ("models: {poet: {ref: x}}\n", "unknown model role"),
        ("[unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config("in", "out", "tiny", str(f))


def test_validation_on_construction():
    with pytest.raises(ConfigError):
        ModelSpec("x", batch_size=0)
    with pytest.raises(ConfigError):
        KeyframeSettings(scene_threshold=0)


def test_old_role_names_still_configure_their_role(tmp_path, caplog):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  summarizer: {ref: my-model}\n  embedder: {batch_size: 3}\n")
    cfg = load_config("in", "out", "tiny", str(f))
    assert cfg.models.summary.ref == "my-model" and cfg.models.embedding.batch_size == 3
    assert "models.summarizer is now called models.summary" in caplog.text


def test_unknown_role_names_the_roles(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  ocr: {ref: x}\n")
    with pytest.raises(ConfigError, match="roles are asr, caption, embedding, summary"):
        load_config("in", "out", "tiny", str(f))
