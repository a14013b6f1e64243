"""The attack objective shared by GCG and BEAST: the loss of a target string after [prefix; suffix; after].

An `AttackPrompt` splits the chat-templated user turn `goal + {optim_str}` at the placeholder (as nanoGCG
does): `before` (system prompt, user tag, goal), the optimised suffix, then `after` (end of turn, assistant
tag) and the target tokens. `TargetObjective` scores a batch of suffixes over one or several prompts (the
universal attack sums their losses), with an optional prefix KV cache and out-of-memory back-off.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from repulse.attacks.batching import BackoffBatcher
from repulse.attacks.gcg_tokens import mellowmax
from repulse.attacks.prefix_cache import PrefixCache
from repulse.infra.errors import UserError

PLACEHOLDER = "{optim_str}"


def adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def chat_text(tokenizer, content: str) -> str:
    """The user turn `content` with the generation prompt, as the text to encode with special tokens.

    A leading BOS is removed only when encoding adds it again. nanoGCG removes every occurrence of the BOS text,
    which for ChatML models whose BOS is `<|im_start|>` (SmolLM2) deletes all the turn markers.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the attacked model's tokenizer has no chat template (GCG and BEAST attack a chat turn)")
    messages = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def split_chat_template(tokenizer, goal: str) -> tuple[str, str]:
    """The text before and after the suffix placeholder in the user turn (placeholder appended to the goal)."""
    before, after = chat_text(tokenizer, goal if PLACEHOLDER in goal else goal + PLACEHOLDER).split(PLACEHOLDER, 1)
    return before, after


def logits_kwarg(model):
    """`n -> {"logits_to_keep": n}` when the model can skip the LM head on earlier positions, else `{}`.

    Only the target positions need logits; with a large vocabulary the head is a sizeable share of the compute.
    """
    accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
    return (lambda n: {"logits_to_keep": n}) if accepts else (lambda n: {})


@dataclass
class AttackPrompt:
    goal: str
    target: str
    before_ids: torch.Tensor  # [1, P]
    after_ids: torch.Tensor  # [1, A]
    target_ids: torch.Tensor  # [1, T]

    @classmethod
    def build(cls, tokenizer, goal: str, target: str, add_space_before_target: bool = False) -> AttackPrompt:
        before, after = split_chat_template(tokenizer, goal)
        target_text = " " + target if add_space_before_target else target
        encode = tokenizer
        before_ids = encode([before], padding=False, return_tensors="pt")["input_ids"]
        after_ids = encode([after], add_special_tokens=False, return_tensors="pt")["input_ids"]
        target_ids = encode([target_text], add_special_tokens=False, return_tensors="pt")["input_ids"]
        if target_ids.shape[1] == 0:
            raise UserError(f"target {target!r} encodes to no tokens")
        if before_ids.shape[1] == 0:
            raise UserError("the chat template puts no token before the goal; the prefix cache needs one")
        return cls(goal, target_text, before_ids, after_ids, target_ids)


class TargetObjective:
    """Loss of the target tokens given each candidate suffix, summed over the prompts (universal attack)."""

    def __init__(self, model, prompts: list[AttackPrompt], *, use_mellowmax: bool = False,
                 mellowmax_alpha: float = 1.0, use_prefix_cache: bool = True,
                 batch_size: int | None = None) -> None:  # fmt: skip
        self.model = model
        self.embedding = model.get_input_embeddings()
        self.device = self.embedding.weight.device
        self.prompts = prompts
        self.use_mellowmax, self.alpha = use_mellowmax, mellowmax_alpha
        self.batcher = BackoffBatcher(batch_size)
        self.keep = logits_kwarg(model)
        with torch.no_grad():
            self.parts = [
                tuple(self.embedding(t.to(self.device)) for t in (p.before_ids, p.after_ids, p.target_ids))
                for p in prompts
            ]
        self.caches = [PrefixCache(model, before) for before, _, _ in self.parts] if use_prefix_cache else None

    def target_logits(self, index: int, suffix_embeds: torch.Tensor) -> torch.Tensor:
        """Logits predicting each target token of prompt `index` -> [B, T, V]."""
        before, after, target = self.parts[index]
        b, n_target = suffix_embeds.shape[0], target.shape[1]
        keep = self.keep(n_target + 1)
        pieces = [suffix_embeds, after.expand(b, -1, -1), target.expand(b, -1, -1)]
        if self.caches is None:
            embeds = torch.cat([before.expand(b, -1, -1), *pieces], dim=1)
            logits = self.model(inputs_embeds=embeds, use_cache=False, **keep).logits
        else:
            embeds = torch.cat(pieces, dim=1)
            cache = self.caches[index].expand(b)
            logits = self.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, **keep).logits
        return logits[:, -n_target - 1 : -1]

    def loss_from_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-row loss [B]: mean cross-entropy, or mellowmax of the negative target logits."""
        if self.use_mellowmax:
            label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            return mellowmax(-label_logits, self.alpha, dim=-1)
        ce = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
        return ce.mean(-1)

    def labels(self, index: int, batch: int) -> torch.Tensor:
        return self.prompts[index].target_ids.to(self.device).expand(batch, -1)

    def gradient(self, ids: torch.Tensor) -> torch.Tensor:
        """d loss / d one-hot(suffix) [L, V], summed over prompts and L2-normalised per position."""
        weight = self.embedding.weight
        one_hot = F.one_hot(ids.to(self.device), weight.shape[0]).to(weight.dtype).unsqueeze(0)
        one_hot.requires_grad_(True)
        embeds = one_hot @ weight
        total = sum(
            self.loss_from_logits(self.target_logits(i, embeds), self.labels(i, 1)).sum()
            for i in range(len(self.prompts))
        )
        (grad,) = torch.autograd.grad(total, one_hot)
        grad = grad[0]
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def losses(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [B] summed over prompts, exact [B] bool: greedy decoding reproduces every target)."""
        ids = ids.to(self.device)

        def chunk(start: int, end: int) -> torch.Tensor:
            embeds = self.embedding(ids[start:end])
            loss = torch.zeros(end - start, device=self.device)
            exact = torch.ones(end - start, dtype=torch.bool, device=self.device)
            for i in range(len(self.prompts)):
                logits = self.target_logits(i, embeds)
                labels = self.labels(i, end - start)
                loss += self.loss_from_logits(logits, labels).float()
                exact &= (logits.argmax(-1) == labels).all(-1)
            return torch.stack([loss, exact.float()], dim=1).cpu()

        out = self.batcher.map(chunk, ids.shape[0])
        return out[:, 0], out[:, 1].bool()


@torch.no_grad()
def target_logprobs(model, prompt: AttackPrompt, suffix_ids: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities [T] of the target after [before; suffix; after] (no cache, one row)."""
    device = model.get_input_embeddings().weight.device
    ids = torch.cat([prompt.before_ids[0], suffix_ids.long().cpu(), prompt.after_ids[0], prompt.target_ids[0]])
    ids = ids.unsqueeze(0).to(device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0].float()
    n = prompt.target_ids.shape[1]
    logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
    return logp.gather(-1, prompt.target_ids[0].to(device).unsqueeze(-1)).squeeze(-1).cpu()
