"""CTranslate2 Whisper folders (faster-whisper's format) read into openai-whisper checkpoints.

``model.bin`` is written by ``ctranslate2.specs.model_spec.ModelSpec._serialize``: a binary version, the
spec's name and revision, then each variable as (name, rank, dims, dtype id, byte count, bytes), then
aliases (name -> name of a variable it shares storage with). The Whisper spec's variable names come from
``ctranslate2.converters.transformers.WhisperLoader``: attention projections are fused (``q|k|v`` for self
attention, ``q`` and ``k|v`` for cross attention, with zeros standing for Whisper's bias-free keys), and
the output projection is an alias of the token embedding. This module undoes exactly that.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# The order of ctranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is read via float32.
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
SUPPORTED_VERSIONS = (5, 6)


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this reader understands."""


def is_ct2_whisper(path: str | Path) -> bool:
    """A folder with ``model.bin`` whose spec is ``WhisperSpec``."""
    model = Path(path) / "model.bin"
    if not model.is_file():
        return False
    with open(model, "rb") as f:
        try:
            return _header(f)[1] == "WhisperSpec"
        except (Ct2FormatError, struct.error):
            return False


def read_variables(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(spec name, {variable name: array})`` of a ``model.bin``, aliases resolved."""
    with open(path, "rb") as f:
        version, spec, _revision = _header(f)
        variables: dict[str, np.ndarray] = {}
        for _ in range(_unpack(f, "I")):
            name = _string(f)
            shape = [_unpack(f, "I") for _ in range(_unpack(f, "B"))]
            dtype_id, size = _unpack(f, "B"), _unpack(f, "I")
            if dtype_id >= len(_DTYPES):
                raise Ct2FormatError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
            variables[name] = _array(f.read(size), _DTYPES[dtype_id], shape)
        if version >= 5:
            for _ in range(_unpack(f, "I")):
                alias, target = _string(f), _string(f)
                variables[alias] = variables[target]
    return spec, variables


def whisper_checkpoint(folder: str | Path) -> dict:
    """An openai-whisper checkpoint (``{"dims", "model_state_dict"}``, float32) from a CT2 Whisper folder."""
    spec, v = read_variables(Path(folder) / "model.bin")
    if spec != "WhisperSpec":
        raise Ct2FormatError(f"{folder} holds a {spec}, not a WhisperSpec")
    if any(name.endswith("_scale") for name in v):
        raise Ct2FormatError(f"{folder} is quantized (int8); convert it with --quantization float16 or float32")
    n_audio_state = v["encoder/conv1/weight"].shape[0]
    n_text_state = v["decoder/embeddings/weight"].shape[1]
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(n_audio_state),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": _layers(v, "encoder"),
        "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(n_text_state),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": _layers(v, "decoder"),
    }
    state: dict[str, np.ndarray] = {
        "encoder.conv1.weight": v["encoder/conv1/weight"],
        "encoder.conv1.bias": v["encoder/conv1/bias"],
        "encoder.conv2.weight": v["encoder/conv2/weight"],
        "encoder.conv2.bias": v["encoder/conv2/bias"],
        "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
        **_norm(v, "encoder/layer_norm", "encoder.ln_post"),
        "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
        "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
        **_norm(v, "decoder/layer_norm", "decoder.ln"),
    }
    for side, layers in (("encoder", dims["n_audio_layer"]), ("decoder", dims["n_text_layer"])):
        for i in range(layers):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            state.update(_attention(v, f"{src}/self_attention", f"{dst}.attn", fused_qkv=True))
            state.update(_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln"))
            if side == "decoder":
                state.update(_attention(v, f"{src}/attention", f"{dst}.cross_attn", fused_qkv=False))
                state.update(_norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln"))
            state.update({
                f"{dst}.mlp.0.weight": v[f"{src}/ffn/linear_0/weight"], f"{dst}.mlp.0.bias": v[f"{src}/ffn/linear_0/bias"],
                f"{dst}.mlp.2.weight": v[f"{src}/ffn/linear_1/weight"], f"{dst}.mlp.2.bias": v[f"{src}/ffn/linear_1/bias"],
            })
            state.update(_norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln"))
    return {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in state.items()},
    }


def convert_whisper(folder: str | Path, target: str | Path) -> Path:
    """Write ``folder``'s model as an openai-whisper ``.pt`` checkpoint at ``target``, and the alignment heads
    its ``config.json`` names (used to time words) beside it as ``alignment_heads.json``."""
    target = Path(target)
    torch.save(whisper_checkpoint(folder), target)
    config = Path(folder) / "config.json"
    heads = json.loads(config.read_text()).get("alignment_heads") if config.is_file() else None
    if heads:
        target.with_name("alignment_heads.json").write_text(json.dumps(heads))
    return target


def _attention(v: dict, src: str, dst: str, fused_qkv: bool) -> dict[str, np.ndarray]:
    if fused_qkv:
        q_w, k_w, val_w = np.split(v[f"{src}/linear_0/weight"], 3)
        q_b, _, val_b = np.split(v[f"{src}/linear_0/bias"], 3)
        out = 1
    else:
        q_w, q_b = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
        k_w, val_w = np.split(v[f"{src}/linear_1/weight"], 2)
        _, val_b = np.split(v[f"{src}/linear_1/bias"], 2)
        out = 2
    return {
        f"{dst}.query.weight": q_w, f"{dst}.query.bias": q_b, f"{dst}.key.weight": k_w,
        f"{dst}.value.weight": val_w, f"{dst}.value.bias": val_b,
        f"{dst}.out.weight": v[f"{src}/linear_{out}/weight"], f"{dst}.out.bias": v[f"{src}/linear_{out}/bias"],
    }


def _norm(v: dict, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": v[f"{src}/gamma"], f"{dst}.bias": v[f"{src}/beta"]}


def _layers(v: dict, side: str) -> int:
    indices = {int(m.group(1)) for name in v if (m := re.match(rf"{side}/layer_(\d+)/", name))}
    if indices != set(range(len(indices))) or not indices:
        raise Ct2FormatError(f"{side} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _header(f: BinaryIO) -> tuple[int, str, int]:
    version = _unpack(f, "I")
    if version not in SUPPORTED_VERSIONS:
        raise Ct2FormatError(f"unsupported CTranslate2 binary version {version}")
    return version, _string(f), _unpack(f, "I")


def _array(data: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    if dtype == "bfloat16":  # numpy has no bfloat16: its bits are the top half of a float32
        wide = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return wide.view(np.float32).reshape(shape)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _unpack(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise Ct2FormatError("model.bin ends early")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _unpack(f, "H")
    return f.read(n)[:-1].decode("utf-8")
