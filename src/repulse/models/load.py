"""Load causal LMs and tokenizers from a folder or hub name, with dtype, attention, 4-bit and LoRA options."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from repulse.config.common import LoraArgs, ModelArgs
from repulse.infra.errors import ModelLoadError, UserError, require_package

log = logging.getLogger("repulse")


def resolve_model_path(pretrain: str | None, default: str = "tiny_lm", what: str = "model") -> str:
    """The --pretrain value, or the embedded default model folder `default` (announced in the log)."""
    if pretrain:
        return pretrain
    from repulse.assets import ASSETS_DIR

    default_dir = ASSETS_DIR / default
    log.info("no %s given: using the embedded default %s", what, default_dir)
    if not default_dir.exists():
        raise ModelLoadError(f"embedded {what} {default_dir} is missing: run `python scripts/build_assets.py`")
    return str(default_dir)


# Any one of these makes a folder a tokenizer folder (fast, BPE, WordPiece or SentencePiece tokenizers).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_loadable(path: str) -> None:
    """A clear error for a path that is neither a folder nor a plausible hub name, and for a local folder
    whose weight files are empty or not readable (an interrupted copy or download)."""
    p = Path(path)
    looks_local = path.startswith((".", "/", "~")) or p.exists() or path.count("/") > 1
    if looks_local and not p.is_dir():
        raise ModelLoadError(f"model path {path!r} is not a folder")
    if p.is_dir():
        for weights in sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()):
            check_weight_file(weights)


def check_weight_file(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {path} is empty (0 bytes): an interrupted copy or download?")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"model file {path} is not a readable safetensors file ({first_line(err)})") from err


def check_tokenizer_folder(path: str) -> None:
    """A local model folder must hold its tokenizer: without one transformers falls back to something unusable."""
    p = Path(path)
    if p.is_dir() and not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...): save the "
            "tokenizer next to the model (tokenizer.save_pretrained(folder))"
        )


def model_positions(path: str) -> int | None:
    """The most tokens the model at `path` can attend over (its position embeddings), when its config says
    (None when it has no readable config: loading the model then gives the error)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    return config_positions(config)


def config_positions(config) -> int | None:
    """The position limit a model config declares (max_position_embeddings / n_positions), or None."""
    text_config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(path: str, *, use_fast: bool = True, padding_side: str = "right", chat_template: str | None = None):
    from transformers import AutoTokenizer

    check_loadable(path)
    check_tokenizer_folder(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=use_fast, padding_side=padding_side)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {path!r}: {first_line(err)}") from err
    if tok.pad_token is None:
        # OpenRLHF convention: pad with EOS; masks keep padding out of every loss.
        tok.pad_token = tok.eos_token
    if chat_template:
        tok.chat_template = chat_template
    return tok


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def model_load_kwargs(model_args: ModelArgs) -> dict[str, Any]:
    """dtype, attention implementation and quantization, with clear errors for GPU-only options."""
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if model_args.bf16 else torch.float32}
    if model_args.flash_attn:
        if not torch.cuda.is_available():
            raise UserError("--flash_attn needs a CUDA GPU; this machine has none (sdpa is used without the flag)")
        require_package("flash_attn", "gpu", "--flash_attn")
        kwargs["attn_implementation"] = "flash_attention_2"
    else:
        kwargs["attn_implementation"] = "sdpa"
    if model_args.load_in_4bit:
        require_package("bitsandbytes", "gpu", "--load_in_4bit")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
    return kwargs


def load_causal_lm(path: str, model_args: ModelArgs, lora: LoraArgs | None = None, *, trainable: bool = True):
    """A causal LM ready to train (LoRA and gradient checkpointing applied) or to score (`trainable=False`)."""
    from transformers import AutoModelForCausalLM

    check_loadable(path)
    if model_args.load_in_4bit and trainable and (lora is None or lora.lora_rank == 0):
        raise UserError("--load_in_4bit trains only through LoRA adapters: also set --lora_rank")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **model_load_kwargs(model_args))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a causal LM from {path!r}: {first_line(err)}") from err
    return finish_model(model, model_args, lora, trainable=trainable, task_type="CAUSAL_LM")


def load_scoring_lm(path: str, bf16: bool = False):
    """A frozen causal LM in eval mode (sampling, exact enumeration, reference models)."""
    return load_causal_lm(path, ModelArgs(bf16=bf16), trainable=False)


def load_reference_lm(path: str, model_args: ModelArgs, *, offload: bool, device: torch.device):
    """A frozen copy for KL/DPO/KTO references or KD teachers: on CPU with `offload`, else on `device`.

    The reference never trains, so LoRA and gradient checkpointing are not applied to it.
    """
    frozen = ModelArgs(
        bf16=model_args.bf16, flash_attn=model_args.flash_attn and not offload, load_in_4bit=model_args.load_in_4bit
    )
    model = load_causal_lm(path, frozen, trainable=False)
    return model.to("cpu" if offload else device)


def finish_model(model, model_args: ModelArgs, lora: LoraArgs | None, *, trainable: bool, task_type: str):
    """Apply LoRA / gradient checkpointing for training, or freeze for scoring."""
    if not trainable:
        model.eval()
        model.requires_grad_(False)
        return model
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None and lora.lora_rank > 0:
        model = apply_lora(model, lora, task_type)
    model.train()
    return model


def apply_lora(model, lora: LoraArgs, task_type: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets: Any = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    config = LoraConfig(
        r=lora.lora_rank,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=targets,
        task_type=task_type,
        bias="none",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"--target_modules {lora.target_modules}: {first_line(err)}") from err
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA rank %d on %s: %d trainable parameters", lora.lora_rank, targets, n_train)
    return model


def save_pretrained_atomic(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> Path:
    """Hugging Face format (an adapter folder for LoRA), written to a temp folder then renamed. `state_dict`:
    the full weights when the model itself holds only a shard of them (gathered by the strategy)."""
    from repulse.infra.files import write_dir_atomic

    def write(tmp: Path) -> None:
        kwargs = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(tmp, safe_serialization=True, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_dir_atomic(path, write)
