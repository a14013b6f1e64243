"""FSDP2's layout (one group per decoder layer, tied embeddings in the root) and its gloo guard, in one process."""

from __future__ import annotations

import pytest
import torch

from repulse.distributed.strategy import OptimizerSpec


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def fsdp2():
    from repulse.distributed.fsdp2 import FSDP2Strategy

    strategy = FSDP2Strategy("gloo")
    strategy.setup_distributed()
    yield strategy
    strategy.cleanup()


def test_layers_tied_embeddings_and_the_gloo_sum_guard(fsdp2):
    from torch.distributed.fsdp import FSDPModule

    from repulse.distributed.fsdp2 import decoder_layers, fsdp_modules

    model = tiny_llama()
    layers = decoder_layers(model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer", "LlamaDecoderLayer"]
    spec = OptimizerSpec(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), None, 1, 1, 1.0)
    model, optimizer, _ = fsdp2.prepare_train(model, spec)
    modules = fsdp_modules(model)
    assert len(modules) == 3 and all(isinstance(layer, FSDPModule) for layer in layers)  # 2 layers + the root
    assert not isinstance(model.model.embed_tokens, FSDPModule)  # in the root's group, with the tied head
    assert model.model.embed_tokens.weight is model.lm_head.weight
    groups = [g for m in modules for g in m._get_fsdp_state()._fsdp_param_groups]
    assert groups and all(g.force_sum_reduction_for_comms for g in groups)  # pytorch#162338 guard
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert fsdp2.optimizer_step(optimizer, model, None, 1.0) > 0


def test_state_dict_for_export_keeps_tied_weights_once(fsdp2):
    model = tiny_llama()
    expected = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    spec = OptimizerSpec(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), None, 1, 1, 1.0)
    model, _, _ = fsdp2.prepare_train(model, spec)
    state = fsdp2.full_state_dict(model)
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
