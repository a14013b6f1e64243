"""Fixtures for the server tests: tiny random reward models (with and without normalization stats) and apps."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.serving.rm_fixture import build_tiny_rm

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra")

STATS = (0.25, 2.0)


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory):
    return build_tiny_rm(tmp_path_factory.mktemp("serve_rm") / "plain")


@pytest.fixture(scope="session")
def rm_dir_norm(tmp_path_factory):
    return build_tiny_rm(tmp_path_factory.mktemp("serve_rm") / "norm", stats=STATS)


@pytest.fixture(scope="session")
def base_cfg():
    from repulse.config.serve import ServeArgs

    # On CPU even where a GPU exists: the in-process references run there.
    return ServeArgs(batch_size=16, max_wait_ms=2.0, device="cpu")


REWARD_FLAGS = ("reward_pretrain", "value_head_prefix", "normalize_reward")


@pytest.fixture(scope="session")
def load(rm_dir, base_cfg):
    """load(**flag overrides) -> a scorer loaded as serve_rm loads it, each flag given to the group it is in."""
    from repulse.config.common import ModelArgs
    from repulse.config.reward import RewardArgs
    from repulse.serving.scorer import load_scorer

    def make(max_len: int = 32, **overrides):
        reward = {"reward_pretrain": str(rm_dir)} | {k: overrides.pop(k) for k in REWARD_FLAGS if k in overrides}
        return load_scorer(ModelArgs(), RewardArgs(**reward), max_len, dataclasses.replace(base_cfg, **overrides))

    return make


@pytest.fixture(scope="session")
def scorer(load):
    return load()


@pytest.fixture
def make_client(scorer, base_cfg):
    """make_client(scorer=None, **flag overrides) -> a started TestClient (closed after the test)."""
    from fastapi.testclient import TestClient

    from repulse.serving.app import create_app

    clients = []

    def make(scorer=scorer, **overrides):
        cfg = dataclasses.replace(base_cfg, **overrides)
        client = TestClient(create_app(scorer, cfg))
        client.__enter__()  # runs the lifespan: the batcher starts
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
