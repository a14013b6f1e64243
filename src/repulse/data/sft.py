"""The SFT dataset: prompt-masked (loss on the response only) or --pretrain_mode (loss on every token).

Rows are prompt/response pairs (--input_key/--output_key), whole conversations (lists of {role, content}; the
loss is on the last assistant reply), or plain text (--pretrain_mode). TRL's dataset formats are read without
flags when the default --input_key is absent: `messages` (conversational), `prompt`/`completion`, and `text`
(language modelling, with --pretrain_mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from repulse.data.templates import format_pair, split_conversation
from repulse.data.tokenize import encode_pair
from repulse.infra.errors import DataError

log = logging.getLogger("repulse")


DEFAULT_INPUT_KEY = "input"


@dataclass(frozen=True)
class SFTFormat:
    input_key: str
    output_key: str | None


def sft_format(columns: list[str] | None, input_key: str, output_key: str | None, pretrain_mode: bool) -> SFTFormat:
    """The keys to read from data with these columns: the flags' keys, or a TRL format when the default input key
    is absent. A missing key is an error that names the formats it would have recognised."""
    given = SFTFormat(input_key, output_key or None)
    if columns is None or input_key in columns:
        return given
    recognised = None
    if input_key == DEFAULT_INPUT_KEY:
        if "messages" in columns and not pretrain_mode:
            recognised = SFTFormat("messages", None)
        elif "prompt" in columns and "completion" in columns and not pretrain_mode:
            recognised = SFTFormat("prompt", "completion")
        elif "text" in columns and pretrain_mode:
            recognised = SFTFormat("text", None)
    if recognised is not None:
        log.info(
            "SFT data: reading TRL's %r format (keys %s)",
            recognised.input_key,
            list(filter(None, vars(recognised).values())),
        )
        return recognised
    raise DataError(
        f"SFT data: missing key(s) {[input_key]} (it has {columns}); set --input_key/--output_key, or use one of "
        "TRL's formats: 'messages' (lists of {role, content}), 'prompt' + 'completion', 'text' with --pretrain_mode"
    )


class SFTDataset(Dataset):
    """Items are dicts {input_ids: LongTensor [S], prompt_len: int}; tokens at positions >= prompt_len are trained."""

    def __init__(
        self,
        rows,
        tokenizer,
        max_len: int,
        *,
        input_key: str = "input",
        output_key: str | None = "output",
        input_template: str | None = None,
        apply_chat_template: bool = False,
        pretrain_mode: bool = False,
    ) -> None:
        self.items: list[dict] = []
        skipped = 0
        for row in rows:
            prompt_text, response_text = self._texts(
                row, tokenizer, input_key, output_key, input_template, apply_chat_template, pretrain_mode
            )
            ids, prompt_len = encode_pair(tokenizer, prompt_text, response_text, max_len)
            if pretrain_mode:
                prompt_len = 0
            if len(ids) - prompt_len < 1 or len(ids) < 2:
                skipped += 1  # the prompt alone fills max_len: nothing left to train on
                continue
            self.items.append({"input_ids": torch.tensor(ids, dtype=torch.long), "prompt_len": prompt_len})
        if skipped:
            log.warning("SFT data: skipped %d examples whose prompt fills --max_len", skipped)
        if not self.items:
            raise DataError("SFT data: no usable examples (empty dataset, or every prompt longer than --max_len)")

    @staticmethod
    def _texts(row, tokenizer, input_key, output_key, input_template, chat, pretrain_mode) -> tuple[str, str]:
        if pretrain_mode:
            text = str(row[input_key]) + (str(row[output_key]) if output_key and output_key in row else "")
            return "", text
        # A conversation (a list of {role, content}) only becomes text through the chat template.
        chat = chat or not isinstance(row[input_key], str)
        if output_key is None or output_key not in row:
            if chat:
                history, reply = split_conversation(row[input_key])
                return format_pair(history, reply, tokenizer, chat=True)
            raise DataError(
                f"SFT data: missing response key {output_key!r} (set --output_key, or --pretrain_mode; rows of "
                "{role, content} lists under 'messages' are read as conversations)"
            )
        return format_pair(row[input_key], row[output_key], tokenizer, input_template=input_template, chat=chat)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def build_sft_datasets(data, tokenizer, *, pretrain_mode: bool, default: str, seed: int):
    """(train, eval or None) SFTDatasets from DataArgs: the embedded `default` data without --dataset."""
    from repulse.data.loading import load_rows, source_columns

    fmt = sft_format(source_columns(data), data.input_key, data.output_key, pretrain_mode)
    # --pretrain_mode trains on input + output when the data has an output column, else on input alone.
    keys = [fmt.input_key] + ([fmt.output_key] if fmt.output_key and not pretrain_mode else [])
    optional = [fmt.output_key] if fmt.output_key else []
    kwargs = dict(
        input_key=fmt.input_key,
        output_key=fmt.output_key,
        input_template=data.input_template,
        apply_chat_template=data.apply_chat_template,
        pretrain_mode=pretrain_mode,
    )
    train = SFTDataset(load_rows(data, keys, default, seed=seed, optional=optional), tokenizer, data.max_len, **kwargs)
    eval_rows = load_rows(data, keys, None, seed=seed, eval_split=True, optional=optional)
    evaluation = SFTDataset(eval_rows, tokenizer, data.max_len, **kwargs) if eval_rows is not None else None
    return train, evaluation
