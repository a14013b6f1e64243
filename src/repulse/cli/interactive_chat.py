"""interactive_chat: talk to a causal LM in the terminal; replies are streamed as they are sampled.

Each turn's prompt is the whole conversation (the tokenizer's chat template with --apply_chat_template, else
--input_template per turn), after the --ta_prompt file's text. Type `clear` to start over, `exit` (or end the
input) to quit. Reads standard input, so a piped script of lines works too.

    repulse interactive_chat --apply_chat_template --greedy_sampling          # the embedded tiny LM
    repulse interactive_chat --pretrain runs/sft/final --input_template $'User: {}\\nAssistant: ' --max_len 512
    printf 'This man is\\nclear\\nThat kid is\\nexit\\n' | repulse interactive_chat --pretrain runs/sft/final
    repulse interactive_chat --pretrain runs/csft/final --enable_csft --csft_prompt '<rm_score>: 5.00'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import DataArgs, ModelArgs
from repulse.config.fields import require
from repulse.config.inference import ChatArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.sampling import GenerationArgs
from repulse.infra.errors import UserError

log = logging.getLogger("repulse")


class ChatConfig(NamedTuple):
    model: ModelArgs
    data: DataArgs
    sampling: GenerationArgs
    chat: ChatArgs


GROUPS = (ModelArgs, DataArgs, GenerationArgs, ChatArgs)
ONLY = {
    DataArgs: ["input_template", "apply_chat_template", "tokenizer_chat_template", "max_len"],
    GenerationArgs: all_but(GenerationArgs, "max_new_tokens"),  # a reply may use what --max_len leaves
}
DEFAULTS = {"input_template": "User: {}\nAssistant: ", "max_len": 2048}


def parse_args(argv: Sequence[str] | None = None) -> ChatConfig:
    cfg = ChatConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY, defaults=DEFAULTS))
    require(not cfg.model.gradient_checkpointing, "--gradient_checkpointing applies to training, not chat")
    return cfg


def read_ta_prompt(path: str | None) -> str | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--ta_prompt {path}: no such file")
    return file.read_text(encoding="utf-8")


def context_length(model_config, max_len: int) -> int:
    """--max_len, capped by the model's positions (announced when it is)."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is not None and int(limit) < max_len:
        log.info("--max_len %d capped to the model's %d positions", max_len, int(limit))
        return int(limit)
    return max_len


def build_session(cfg: ChatConfig):
    import torch

    from repulse.generation.batch import sampling_params
    from repulse.generation.chat import ChatSession
    from repulse.infra.seed import set_seed
    from repulse.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    c, d = cfg.chat, cfg.data
    system_prompt = read_ta_prompt(c.ta_prompt)
    set_seed(cfg.sampling.seed)
    path = resolve_model_path(cfg.model.pretrain)
    tokenizer = load_tokenizer(
        path, use_fast=not cfg.model.disable_fast_tokenizer, chat_template=d.tokenizer_chat_template
    )
    if d.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError("--apply_chat_template: the tokenizer has no chat template (set --tokenizer_chat_template)")
    model = load_causal_lm(path, cfg.model, trainable=False)
    if torch.cuda.is_available() and not cfg.model.load_in_4bit:
        model.to("cuda")
    return ChatSession(
        model,
        tokenizer,
        sampling_params(cfg.sampling, max_new_tokens=1),  # the token budget is set per turn from --max_len
        max_len=context_length(model.config, d.max_len),
        chat=d.apply_chat_template,
        input_template=d.input_template,
        system_prompt=system_prompt,
        csft_prompt=c.csft_prompt if c.enable_csft else None,
    )


def chat(cfg: ChatConfig) -> int:
    from repulse.generation.chat import run_chat

    session = build_session(cfg)
    log.info("chat ready: type a message; `clear` starts over, `exit` quits")
    return run_chat(session)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: chat(parse_args(a)), argv, "interactive_chat")


if __name__ == "__main__":
    raise SystemExit(main())
