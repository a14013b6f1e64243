"""What train_ppo_ray's vLLM rollouts do without vLLM: the engine flags refuse what cannot work, the trainers draw
through a swappable Sampler, a rollout rebuilt from drawn token ids is the one repulse's sampler makes (layout,
texts, the model's own log-probs), each prompt's engine seed depends on its place in the batch only, each pool
gets its own model's weights after the updates that changed it, and the gloo broadcast delivers what the object
store delivers, bucket by bucket in order."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load

from repulse.cli import train_ppo_ray
from repulse.config.fields import ConfigError
from repulse.config.ray_cluster import RayArgs
from repulse.distributed.ray.rollouts import EnginePool, EngineRollouts, EngineSampler, weights_version
from repulse.distributed.ray.weight_sync import bucketed, buckets, meta_of, named_weights, receive, send, side_group
from repulse.generation.generate import SamplingParams
from repulse.rl.rollout import rollout_from_tokens, sample_rollout
from tests.conftest import make_gpt2
from tests.unit.trainers.test_rl_phases import recipe


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"vllm_num_engines": -1}, "--vllm_num_engines must be >= 0, got -1"),
        ({"vllm_tensor_parallel_size": 0}, "--vllm_tensor_parallel_size must be >= 1, got 0"),
        ({"vllm_gpu_memory_utilization": 1.5}, r"--vllm_gpu_memory_utilization must be in \(0, 1\], got 1.5"),
        ({"vllm_sync_backend": "mpi"}, "--vllm_sync_backend must be one of ray, gloo, nccl, got 'mpi'"),
        (
            {"vllm_num_engines": 1, "actor_num_gpus_per_node": 2},
            "--vllm_num_engines 1 with 2 policy ranks: vLLM engines are driven by one policy rank",
        ),
    ],
)
def test_engine_flags_refuse_what_cannot_work(flags, message):
    with pytest.raises(ConfigError, match=message):
        RayArgs(**flags)


def test_lora_with_engines_is_one_line(capsys):
    assert train_ppo_ray.main(["--vllm_num_engines", "1", "--lora_rank", "4"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lora_rank 4: the engines take full weights" in err[0]


class Recording:
    """A Sampler that records which model it drew for and delegates to repulse's sampler."""

    def __init__(self) -> None:
        self.models: list[torch.nn.Module] = []

    def __call__(self, model, *args, **kwargs):
        self.models.append(model)
        return sample_rollout(model, *args, **kwargs)


def test_the_trainer_draws_through_its_sampler(tmp_path, tiny_model_dir):
    single = ["--new_custom_single_prompt", "--micro_rollout_batch_size", "1", "--rollout_batch_size", "1"]
    r = recipe(tmp_path, tiny_model_dir, *single)
    r.trainer.sampler = sampler = Recording()
    r.trainer.make_experience(r.prompt_ids, 0, "both")
    assert sampler.models == [r.models.policy, r.models.proposal]


def test_a_rollout_from_token_ids_is_the_samplers(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [[5, 6, 7], [11], [8, 9]]
    params = SamplingParams(max_new_tokens=5)
    drawn = sample_rollout(model, tokenizer, prompts, 3, params, seed=4)
    tokens = [drawn.actions[i][drawn.action_mask[i]].tolist() for i in range(len(drawn.prompts))]
    groups = [tokens[p * 3 : (p + 1) * 3] for p in range(len(prompts))]
    rebuilt = rollout_from_tokens(model, tokenizer, prompts, groups, 3)
    width = rebuilt.sequences.shape[1]  # the sampler's width may hold columns of padding only
    assert torch.equal(rebuilt.sequences, drawn.sequences[:, :width])
    assert torch.equal(rebuilt.attention_mask, drawn.attention_mask[:, :width])
    assert torch.equal(rebuilt.action_mask, drawn.action_mask[:, : rebuilt.num_actions])
    assert (rebuilt.prompts, rebuilt.responses) == (drawn.prompts, drawn.responses)
    torch.testing.assert_close(rebuilt.logps, drawn.logps[:, : rebuilt.num_actions], rtol=1e-5, atol=1e-5)
    # an engine that stops at another end token: the response still ends at the tokenizer's first EOS
    past_eos = rollout_from_tokens(model, tokenizer, [[5]], [[[7, tokenizer.eos_token_id, 8]]], 1)
    assert past_eos.action_mask.tolist() == [[True, True, False]] and past_eos.logps[0, 2] == 0


class FakePool:
    def __init__(self, vocab_token: int) -> None:
        self.token, self.seeds, self.synced, self.version = vocab_token, [], [], 0

    def sample(self, model, prompt_ids, params, seeds):
        self.seeds.extend(seeds)
        return [[[self.token] * 2] * params.num_samples for _ in prompt_ids]

    def sync(self, model) -> None:
        self.synced.append(model)
        self.version = weights_version(model)


def test_engine_seeds_follow_the_prompt_not_the_split(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = FakePool(9)
    sampler = EngineSampler({id(model): pool})
    prompts, params = [[5], [6], [7], [8]], SamplingParams(max_new_tokens=2)
    roll = sampler(model, tokenizer, prompts, 2, params, batch_size=4, seed=11)
    assert roll.sequences.shape[0] == 8 and roll.actions.eq(9).all()
    whole = list(pool.seeds)
    pool.seeds.clear()
    sampler(model, tokenizer, prompts[:1], 2, params, batch_size=4, seed=11)
    sampler(model, tokenizer, prompts[1:], 2, params, batch_size=4, seed=11, first_prompt=1)
    assert pool.seeds == whole and len(set(whole)) == 4
    other = make_gpt2(len(tokenizer))  # a model without a pool samples with repulse's sampler
    assert sampler(other, tokenizer, prompts, 1, params, batch_size=4, seed=11).sequences.shape[0] == 4
    assert len(pool.seeds) == 4  # untouched by the other model


def step(model: torch.nn.Module) -> None:
    """An optimizer step's worth of change."""
    model(torch.tensor([[1, 2]])).logits.sum().backward()
    torch.optim.AdamW(model.parameters(), lr=0.1).step()


def test_each_pool_gets_its_own_model_after_each_change():
    p, q = make_gpt2(30), make_gpt2(30)
    pools = {"policy": FakePool(1), "proposal": FakePool(2)}
    rollouts = EngineRollouts(pools, {"policy": p, "proposal": q})
    assert rollouts.sampler.pools == {id(p): pools["policy"], id(q): pools["proposal"]}
    rollouts.sync()
    assert pools["policy"].synced == [p] and pools["proposal"].synced == [q]
    rollouts.sync()  # nothing changed: nothing sent
    step(q)  # a proposal-only round: q changed, p did not
    rollouts.sync()
    assert pools["policy"].synced == [p] and pools["proposal"].synced == [q, q]
    step(p)
    step(q)
    rollouts.sync()
    assert pools["policy"].synced == [p, p] and pools["proposal"].synced == [q, q, q]


def test_a_pool_sends_the_version_its_model_is_at_and_samples_at_it(monkeypatch):
    model = make_gpt2(30)
    pool = EnginePool("policy", [], "ray", 60)
    sent = []
    pool.sender = SimpleNamespace(send=lambda m, version: sent.append(version))
    pool.sync(model)
    before = weights_version(model)
    step(model)
    assert weights_version(model) > before  # an optimizer step moves the model's version on
    pool.sync(model)
    assert sent == [before, weights_version(model)] and pool.version == sent[-1]
    asked = []
    pool.engines = [
        SimpleNamespace(sample=SimpleNamespace(remote=lambda p, params, version, s: asked.append(version)))
    ]
    monkeypatch.setattr("repulse.distributed.ray.rollouts.wait", lambda calls, what, timeout: [[]])
    step(model)  # trained again, not synced: the engines are asked for the model's version, which they lack
    pool.sample(model, [[1]], SamplingParams(), [None])
    assert asked == [weights_version(model)] and asked[0] != pool.version


def test_the_gloo_broadcast_delivers_what_the_object_store_delivers():
    from torch.distributed import TCPStore

    model = make_gpt2(30)
    size = 2048  # several buckets
    parts = list(bucketed(named_weights(model), size))
    metas = [meta_of(b) for b in parts]
    assert len(parts) > 2 and [n for m in metas for n, *_ in m] == list(model.state_dict())
    store = TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)
    got: list[dict[str, torch.Tensor]] = []

    def engine_worker() -> None:
        group = side_group("gloo", "127.0.0.1", store.port, 1, 2, 60)
        got.extend(receive(group, metas))

    thread = threading.Thread(target=engine_worker)
    thread.start()
    sender = side_group("gloo", "127.0.0.1", store.port, 0, 2, 60, store=store)
    send(sender, parts)
    thread.join(timeout=60)
    stored = [load(blob) for blob in buckets(named_weights(model), size)]
    assert [list(b) for b in got] == [[n for n, _ in b] for b in parts]  # bucket by bucket, in order
    assert [set(b) for b in got] == [set(b) for b in stored]
    assert all(torch.equal(b[k], s[k]) for b, s in zip(got, stored, strict=True) for k in b)
