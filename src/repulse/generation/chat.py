"""A terminal conversation with a causal LM: history, `clear` and `exit`, replies streamed as they are sampled.

The prompt of each turn is the whole conversation so far, rendered with the tokenizer's chat template or,
without one, by concatenating `input_template.format(user) + reply` for every earlier turn (OpenRLHF's
interactive_chat), after the --ta_prompt text.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

import torch

from repulse.data.templates import format_prompt
from repulse.generation.generate import SamplingParams
from repulse.generation.stepwise import sample_stepwise

log = logging.getLogger("repulse")


def make_streamer(tokenizer, out: TextIO):
    """A transformers streamer writing each finished word to `out` (TextStreamer itself prints to stdout)."""
    from transformers import TextStreamer

    class WriteStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text)
            out.flush()

    return WriteStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    params: SamplingParams
    max_len: int
    chat: bool = False
    input_template: str = "User: {}\nAssistant: "
    system_prompt: str | None = None
    csft_prompt: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.turns.clear()

    def build_prompt(self, user_text: str) -> str:
        """The text the model continues: every earlier turn, then this one."""
        if self.chat:
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            for user, reply in self.turns:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            prompt = format_prompt([*messages, {"role": "user", "content": user_text}], self.tokenizer, chat=True)
        else:
            history = "".join(self.input_template.format(u) + r + "\n" for u, r in self.turns)
            prompt = (self.system_prompt or "") + history + self.input_template.format(user_text)
        # Conditional SFT: the reward condition goes right where the response starts (as OpenRLHF).
        return prompt + self.csft_prompt.strip() + " " if self.csft_prompt else prompt

    def encode(self, user_text: str) -> torch.Tensor:
        ids = self.tokenizer(self.build_prompt(user_text), add_special_tokens=True, return_tensors="pt")["input_ids"]
        if ids.shape[1] >= self.max_len and self.turns:
            log.warning("the conversation is longer than --max_len %d tokens: history cleared", self.max_len)
            self.reset()
            return self.encode(user_text)
        if ids.shape[1] >= self.max_len:
            log.warning("the message is longer than --max_len %d tokens: its start is cut", self.max_len)
            ids = ids[:, -(self.max_len - 1) :]
        return ids

    def respond(self, user_text: str, out: TextIO) -> str:
        """Sample a reply (streamed to `out`), record the turn, return the reply."""
        ids = self.encode(user_text)
        params = SamplingParams(**{**self.params.__dict__, "max_new_tokens": self.max_len - ids.shape[1]})
        device = next(self.model.parameters()).device
        seq = sample_stepwise(
            self.model,
            self.tokenizer,
            ids.to(device),
            torch.ones_like(ids).to(device),
            params,
            streamer=make_streamer(self.tokenizer, out),
        )
        reply = self.tokenizer.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
        self.turns.append((user_text, reply))
        return reply


def run_chat(session: ChatSession, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Read user lines until `exit` or end of input; `clear` starts a new conversation. Returns 0."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    while True:
        out.write("User: ")
        out.flush()
        line = stdin.readline()
        if not line:  # end of input (Ctrl-D or the end of a piped script)
            out.write("\n")
            return 0
        text = line.strip()
        if text == "exit":
            return 0
        if text == "clear":
            session.reset()
            out.write("(history cleared)\n")
            continue
        if not text:
            continue
        out.write("Assistant: ")
        session.respond(text, out)
        out.write("\n")
        out.flush()
