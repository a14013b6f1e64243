"""Merge a LoRA adapter into its base model (W + scale * B A) and prove the merged model computes the same thing.

The base defaults to the one the adapter records (`base_model_name_or_path` in adapter_config.json): merging
into any other model "works" whenever the shapes happen to fit, and the probe check cannot tell. A tokenizer
saved with the adapter must have the base's vocabulary. The merged folder is written to a temporary name,
reloaded from disk and compared with base + adapter on a seeded probe batch; only if the outputs agree is it
renamed into place. A reward model (--is_rm) keeps the adapter's trained head (peft stores it in
modules_to_save) and the normalization statistics of its config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from repulse.config.common import ModelArgs
from repulse.infra.errors import UserError
from repulse.models.load import first_line

log = logging.getLogger("repulse")

PROBE_ROWS, PROBE_LEN = 4, 12


@dataclass
class MergeReport:
    output_path: str
    max_abs_diff: float
    tolerance: float
    merged_modules: int


def check_adapter_dir(lora_path: str, is_rm: bool) -> Path:
    """The adapter folder; its task type must match --is_rm (peft would silently drop a reward head)."""
    path = Path(lora_path)
    if not path.is_dir():
        raise UserError(f"--lora_path {lora_path}: no such folder")
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"--lora_path {lora_path}: no adapter_config.json (not a peft LoRA adapter folder)")
    task = json.loads((path / "adapter_config.json").read_text()).get("task_type")
    if is_rm and task == "CAUSAL_LM":
        raise UserError(f"--lora_path {lora_path}: a causal-LM adapter (task_type CAUSAL_LM); drop --is_rm")
    if not is_rm and task in ("SEQ_CLS", "TOKEN_CLS"):
        raise UserError(f"--lora_path {lora_path}: a reward-model adapter (task_type {task}); add --is_rm")
    return path


def recorded_base(adapter_dir: Path) -> str | None:
    """The base model the adapter was trained on, as peft recorded it (None when it recorded none)."""
    return json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") or None


def choose_base(model_path: str | None, adapter_dir: Path) -> str:
    """--model_path, else the adapter's recorded base (which must be reachable from here)."""
    recorded = recorded_base(adapter_dir)
    if model_path:
        if recorded and Path(recorded).expanduser().resolve() != Path(model_path).expanduser().resolve():
            log.warning(
                "--model_path %s is not the base the adapter records (%s); merging into %s",
                model_path,
                recorded,
                model_path,
            )
        return model_path
    if recorded is None:
        raise UserError(f"--lora_path {adapter_dir}: adapter_config.json records no base model; pass --model_path")
    looks_local = recorded.startswith((".", "/", "~")) or recorded.count("/") > 1
    if looks_local and not Path(recorded).expanduser().is_dir():
        raise UserError(
            f"--lora_path {adapter_dir}: its base model {recorded} (recorded in adapter_config.json) is not a "
            "folder here; pass --model_path"
        )
    log.info("base model: %s (recorded in %s/adapter_config.json)", recorded, adapter_dir)
    return recorded


def merge_tokenizer(adapter_dir: Path, model_path: str, embedding_rows: int):
    """The adapter folder's tokenizer when it has one (it must match the base's vocabulary), else the base's."""
    from repulse.models.load import load_tokenizer

    base_tokenizer = load_tokenizer(model_path)
    if not (adapter_dir / "tokenizer_config.json").is_file():
        return base_tokenizer
    tokenizer = load_tokenizer(str(adapter_dir))
    if tokenizer.get_vocab() != base_tokenizer.get_vocab() or len(tokenizer) > embedding_rows:
        raise UserError(
            f"--lora_path {adapter_dir}: its tokenizer ({len(tokenizer)} tokens) does not match the base model "
            f"{model_path} ({len(base_tokenizer)} tokens, {embedding_rows} embedding rows): merge into the model "
            "the adapter was trained on (--model_path)"
        )
    return tokenizer


def load_base(path: str, *, is_rm: bool, bf16: bool):
    """The frozen base model: a causal LM, or a sequence-regression reward model."""
    from repulse.models.load import load_causal_lm
    from repulse.models.reward import load_reward_model

    args = ModelArgs(bf16=bf16)
    return load_reward_model(path, args) if is_rm else load_causal_lm(path, args, trainable=False)


def attach_adapter(base, lora_path: Path):
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base, str(lora_path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        raise UserError(f"--lora_path {lora_path}: does not fit the base model ({first_line(err)})") from err
    model.eval()
    return model


def probe_batch(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random token ids (every row a different length, right-padded) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (PROBE_ROWS, PROBE_LEN), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, PROBE_ROWS):
        mask[row, PROBE_LEN - row :] = 0
    return ids, mask


@torch.no_grad()
def probe_outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LM logits at real tokens, or the reward-model scores, as float32."""
    out = model(input_ids=ids, attention_mask=mask).logits.float()
    return out if out.dim() == 2 else out[mask.bool()]


def tolerance(reference: torch.Tensor, bf16: bool) -> float:
    # Merging rounds W + BA once; in bf16 that rounding (8 mantissa bits) dominates, in fp32 only summation
    # order differs. The bound scales with the outputs' magnitude.
    relative = 5e-2 if bf16 else 1e-4
    return relative * max(1.0, float(reference.abs().max()))


def merge_lora(model_path: str, lora_path: str, output_path: str, *, is_rm: bool = False, bf16: bool = False):
    """Merge, save (model + tokenizer) atomically after checking the reloaded copy; returns a MergeReport."""
    from repulse.infra.files import write_dir_atomic

    adapter_dir = check_adapter_dir(lora_path, is_rm)
    base = load_base(model_path, is_rm=is_rm, bf16=bf16)
    rows = base.get_input_embeddings().weight.shape[0]
    tokenizer = merge_tokenizer(adapter_dir, model_path, rows)
    model = attach_adapter(base, adapter_dir)
    ids, mask = probe_batch(rows)
    reference = probe_outputs(model, ids, mask)
    n_lora = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A"))
    if n_lora == 0:
        raise UserError(f"--lora_path {lora_path}: the adapter holds no LoRA layers for this base model")
    merged = model.merge_and_unload()
    report = MergeReport(output_path, 0.0, tolerance(reference, bf16), n_lora)

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = load_base(str(tmp), is_rm=is_rm, bf16=bf16)
        report.max_abs_diff = float((probe_outputs(reloaded, ids, mask) - reference).abs().max())
        if not report.max_abs_diff <= report.tolerance:
            raise UserError(
                f"the merged model differs from base + adapter by {report.max_abs_diff:.3g} on the probe batch "
                f"(tolerance {report.tolerance:.3g}); nothing was written to {output_path}"
            )

    write_dir_atomic(output_path, write)
    log.info("merged %d LoRA modules; probe max |diff| %.3g", n_lora, report.max_abs_diff)
    return report
