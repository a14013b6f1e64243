"""The attack objective shared by GCG and BEAST: the loss of a target string after [prefix; suffix; after].

An `AttackPrompt` splits the chat-templated user turn `goal + {optim_str}` at the placeholder (as nanoGCG
does): `before` (system prompt, user tag, goal), the optimised suffix, then `after` (end of turn, assistant
tag) and the target tokens. `TargetObjective` scores a batch of suffixes over one or several prompts (the
universal attack sums their losses), with an optional prefix KV cache and out-of-memory back-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from repulse.attacks.batching import BackoffBatcher, forward_overhead, shared_prefix_groups
from repulse.attacks.gcg_tokens import mellowmax
from repulse.attacks.prefix_cache import PrefixCache
from repulse.infra.errors import UserError
from repulse.models.logprobs import logits_kwarg

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

    def __init__(
        self,
        model,
        prompts: list[AttackPrompt],
        *,
        use_mellowmax: bool = False,
        mellowmax_alpha: float = 1.0,
        use_prefix_cache: bool = True,
        batch_size: int | None = None,
    ) -> None:
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
        self.reference: tuple[torch.Tensor, list[PrefixCache]] | None = None

    def target_logits(
        self, index: int, suffix_embeds: torch.Tensor, cache: PrefixCache | None = None, filled: list | None = None
    ) -> torch.Tensor:
        """Logits predicting each target token of prompt `index` -> [B, T, V].

        `cache` (default: the prompt's prefix cache) holds everything before `suffix_embeds`. The last target
        token is not fed: no logit after it is needed. With a prefix cache, `filled` receives the cache of
        the whole sequence.
        """
        before, after, target = self.parts[index]
        b, n_target = suffix_embeds.shape[0], target.shape[1]
        pieces = [suffix_embeds, after.expand(b, -1, -1), target[:, :-1].expand(b, -1, -1)]
        if self.caches is None:
            embeds = torch.cat([before.expand(b, -1, -1), *pieces], dim=1)
            logits = self.model(inputs_embeds=embeds, use_cache=False, **self.keep(n_target)).logits
        else:
            embeds = torch.cat(pieces, dim=1)
            past = (cache or self.caches[index]).expand(b)
            logits = self.model(
                inputs_embeds=embeds, past_key_values=past, use_cache=True, **self.keep(n_target)
            ).logits
            if filled is not None:
                filled.append(PrefixCache.of(self.model.config, past))
        return logits[:, -n_target:]

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
        scale = getattr(self.embedding, "embed_scale", None)  # Gemma 3 scales inside its embedding module
        if scale is not None:
            embeds = embeds * scale.to(embeds.dtype)
        filled: list[PrefixCache] = []
        total = sum(
            self.loss_from_logits(self.target_logits(i, embeds, filled=filled), self.labels(i, 1)).sum()
            for i in range(len(self.prompts))
        )
        (grad,) = torch.autograd.grad(total, one_hot)
        # prefix + suffix: what `losses_near(ids, ...)` reuses next, if these are the embeddings scoring looks up
        self.reference = None
        if self.caches is not None and torch.equal(embeds.detach()[0], self.embedding(ids.to(self.device))):
            ends = [cache.length + ids.shape[0] for cache in self.caches]
            self.reference = (ids.cpu().clone(), [c.truncated(end) for c, end in zip(filled, ends, strict=True)])
        grad = grad[0]
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def losses(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [B] summed over prompts, exact [B] bool: greedy decoding reproduces every target)."""
        ids = ids.to(self.device)
        caches = self.caches or [None] * len(self.prompts)
        return self._scored(lambda start, end: self._score(ids[start:end], caches), ids.shape[0])

    @torch.no_grad()
    def losses_near(self, reference: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`losses(ids)` for candidates made by editing `reference` [L] (GCG's step), with less compute.

        Identical rows are scored once, and a row whose first edit is at position d reuses the KV cache of
        prefix + reference[:g] for its group's start g <= d, so only its last L - g suffix tokens are run.
        Groups trade the tokens saved against one forward pass each (`shared_prefix_groups`). Same values
        up to float rounding.
        """
        if self.caches is None:
            return self.losses(ids)
        unique, inverse = torch.unique(ids.cpu(), dim=0, return_inverse=True)
        reference = reference.cpu()
        changed = unique != reference
        # Never past L - 1, so at least one token precedes the target even with an empty `after`.
        first = torch.where(changed.any(1), changed.int().argmax(1), reference.shape[0]).clamp_max(len(reference) - 1)
        order = torch.argsort(first, stable=True)
        unique, first = unique[order].to(self.device), first[order]
        values, counts = torch.unique_consecutive(first, return_counts=True)
        tail = sum(after.shape[1] + target.shape[1] - 1 for _, after, target in self.parts) / len(self.parts)
        starts = shared_prefix_groups(
            values.tolist(), counts.tolist(), round(len(reference) + tail), forward_overhead(self.device)
        )
        first = torch.repeat_interleave(torch.tensor(starts), counts)  # each row's group start
        if self.reference is not None and torch.equal(self.reference[0], reference):
            full = self.reference[1]  # the gradient pass just computed them
        else:
            embeds = self.embedding(reference.unsqueeze(0).to(self.device))
            full = [cache.extended(self.model, embeds) for cache in self.caches]
        trim = [cache.length - len(reference) for cache in full]
        out, exact = self._score_groups(
            unique, first, lambda d: [c.truncated(n + d) for c, n in zip(full, trim)], lambda d: d
        )
        return unsort(order, out, exact, inverse)

    @torch.no_grad()
    def losses_extending(self, prefixes: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`losses(ids)` for rows that each start with one of the rows of `prefixes` [R, l] (BEAST's beam).

        The prefixes run once (as one batch, on top of the prompt's cache); each candidate then feeds only its
        tokens after its prefix, on a copy of its prefix's cache rows, in one forward pass per chunk (the
        prefixes are all of one length). Same values up to float rounding.
        """
        width = prefixes.shape[1]
        if self.caches is None or width == 0:
            return self.losses(ids)
        if ids.shape[1] <= width:
            raise ValueError(f"candidates of {ids.shape[1]} tokens do not extend prefixes of {width}")
        lookup = {tuple(row): r for r, row in enumerate(prefixes.tolist())}
        try:
            parent = torch.tensor([lookup[tuple(row)] for row in ids[:, :width].tolist()], device=self.device)
        except KeyError as err:
            raise ValueError(f"a candidate starts with {list(err.args[0])}, which is none of the prefixes") from err
        tails = ids[:, width:].to(self.device)
        embeds = self.embedding(prefixes.to(self.device))
        full = [cache.extended(self.model, embeds) for cache in self.caches]

        def chunk(start: int, end: int) -> torch.Tensor:
            return self._score(tails[start:end], [cache.rows(parent[start:end]) for cache in full])

        return self._scored(chunk, ids.shape[0])

    def _score_groups(self, rows: torch.Tensor, keys: torch.Tensor, caches_for, start_of):
        """(loss, exact) for `rows` sorted by `keys` [N]: the rows of one key are fed from `start_of(key)` on, after
        the caches `caches_for(key)` (one per prompt); chunks of the batch size, out-of-memory back-off."""

        def chunk(start: int, end: int) -> torch.Tensor:
            parts = []
            values, counts = torch.unique_consecutive(keys[start:end], return_counts=True)
            for key, count in zip(values.tolist(), counts.tolist(), strict=True):
                parts.append(self._score(rows[start : start + count, start_of(key) :], caches_for(key)))
                start += count
            return torch.cat(parts)

        return self._scored(chunk, rows.shape[0])

    def _scored(self, chunk, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batcher.map(chunk, n)
        return out[:, 0], out[:, 1].bool()

    def _score(self, suffix_ids: torch.Tensor, caches: list) -> torch.Tensor:
        """[B, 2]: (loss summed over prompts, exact) for suffix tokens fed after each prompt's cache."""
        b = suffix_ids.shape[0]
        embeds = self.embedding(suffix_ids)
        loss = torch.zeros(b, device=self.device)
        exact = torch.ones(b, dtype=torch.bool, device=self.device)
        for i, cache in enumerate(caches):
            logits = self.target_logits(i, embeds, cache)
            labels = self.labels(i, b)
            loss += self.loss_from_logits(logits, labels).float()
            exact &= (logits.argmax(-1) == labels).all(-1)
        return torch.stack([loss, exact.float()], dim=1).cpu()


def unsort(order: torch.Tensor, loss: torch.Tensor, exact: torch.Tensor, inverse: torch.Tensor | None = None):
    """Results computed in `order` back to the input order (then expanded by `inverse`, for deduplicated rows)."""
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))
    loss, exact = loss[back], exact[back]
    return (loss, exact) if inverse is None else (loss[inverse], exact[inverse])


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
