"""Turn a prompt (text or chat messages) and a response into the exact strings the model sees."""

from __future__ import annotations

from typing import Any

from repulse.infra.errors import DataError


def as_messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return list(prompt)
    raise DataError(f"expected a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def format_prompt(prompt: Any, tokenizer, *, input_template: str | None = None, chat: bool = False) -> str:
    """The prompt text ending where the response starts."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "--apply_chat_template: the tokenizer has no chat template (set --tokenizer_chat_template)"
            )
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise DataError("a chat-format (messages) prompt needs --apply_chat_template")
    return input_template.format(prompt) if input_template else prompt


def format_pair(prompt: Any, response: Any, tokenizer, *, input_template: str | None = None, chat: bool = False):
    """(prompt_text, response_text) so that prompt_text + response_text is the full training text."""
    prompt_text = format_prompt(prompt, tokenizer, input_template=input_template, chat=chat)
    if not chat:
        if not isinstance(response, str):
            raise DataError(f"response must be a string, got {type(response).__name__}")
        return prompt_text, response
    content = response if isinstance(response, str) else response[-1]["content"]
    messages = [*as_messages(prompt), {"role": "assistant", "content": content}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt_text):
        # Templates that rewrite earlier turns: fall back to prompt + raw content.
        return prompt_text, content
    return prompt_text, full[len(prompt_text) :]


def split_conversation(messages: Any) -> tuple[list[dict[str, str]], str]:
    """A whole conversation -> (all turns but the last, the last assistant reply)."""
    msgs = as_messages(messages)
    if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
        raise DataError("a conversation must end with an assistant message")
    return msgs[:-1], msgs[-1]["content"]


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[list[dict[str, str]], str, str]:
    """TRL's implicit-prompt pair (chosen and rejected as whole conversations) -> (the turns they share, the chosen
    reply, the rejected reply). After the shared turns each must hold exactly one assistant message."""
    chosen, rejected = as_messages(chosen), as_messages(rejected)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    rest = (chosen[shared:], rejected[shared:])
    if shared == 0 or any(len(r) != 1 or r[0]["role"] != "assistant" for r in rest):
        raise DataError(
            "implicit-prompt preference pair: chosen and rejected must share their first turns and then hold one "
            f"assistant message each (got {len(rest[0])} and {len(rest[1])} turns after {shared} shared)"
        )
    return chosen[:shared], rest[0][0]["content"], rest[1][0]["content"]
