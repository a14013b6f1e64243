"""The HTTP API on FastAPI's TestClient: same rewards as in-process, batching across clients, 4xx answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace

import httpx
import pytest
import torch

from repulse.serving.app import create_app
from tests.unit.serving.reference import reference_rewards

QUERIES = [" good man .", " jerk .", " so very kind", ""]
PROMPTS = ["this man is a", "this woman is a", "the man is", "a"]
FULL = [p + q for p, q in zip(PROMPTS, QUERIES, strict=True)]


def rewards_of(client, **body) -> torch.Tensor:
    response = client.post("/get_reward", json=body)
    assert response.status_code == 200, response.text
    return torch.tensor(response.json()["rewards"])


@pytest.fixture(scope="module")
def norm_scorer(rm_dir_norm, load):
    return load(reward_pretrain=str(rm_dir_norm))


@pytest.mark.parametrize("normalized", [False, True], ids=["raw", "normalized"])
def test_server_rewards_equal_in_process_rewards(make_client, scorer, norm_scorer, normalized):
    used = norm_scorer if normalized else scorer
    client = make_client(scorer=used)
    got = rewards_of(client, query=FULL)
    want = reference_rewards(used.model, used.tokenizer, FULL)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (used.stats is not None) == normalized


def test_query_holds_the_full_texts_and_prompts_are_not_used(make_client, caplog):
    """The fork's protocol: an OpenRLHF client sends query = prompt + response and the prompts beside it."""
    client = make_client()
    caplog.set_level("WARNING", logger="repulse")
    plain = rewards_of(client, query=FULL)
    torch.testing.assert_close(rewards_of(client, query=FULL, prompts=PROMPTS), plain, atol=0, rtol=0)
    assert "does not start with its prompt" not in caplog.text
    assert not torch.allclose(rewards_of(client, query=QUERIES), plain)  # the prompts are part of the text
    # A client of the earlier protocol (responses in query): scored as sent, and the log says why once.
    rewards_of(client, query=QUERIES, prompts=PROMPTS)
    rewards_of(client, query=QUERIES, prompts=PROMPTS)
    assert caplog.text.count("a query does not start with its prompt") == 1


def test_truncation_is_train_rms(load, make_client):
    short = load(max_len=4)
    client = make_client(scorer=short)
    text = "this man is a very very kind and good man ."
    got = rewards_of(client, query=[text])
    as_trained = reference_rewards(short.model, short.tokenizer, [text], max_len=4)
    torch.testing.assert_close(got, as_trained, atol=1e-5, rtol=0)
    ids = short.tokenizer(text)["input_ids"] + [short.tokenizer.eos_token_id]
    tail = reference_rewards(short.model, short.tokenizer, [short.tokenizer.decode(ids[-4:-1])], max_len=4)
    assert not torch.allclose(got, tail)  # keeping the end would score something else


async def post_concurrently(app, bodies: list[dict]) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/get_reward", json=b) for b in bodies))


def test_concurrent_requests_are_merged_into_fewer_model_calls(scorer, base_cfg):
    calls: list[int] = []
    hook = scorer.model.transformer.register_forward_hook(lambda mod, args, out: calls.append(len(out[0])))
    bodies = [{"query": FULL[: 1 + i % 3], "prompts": PROMPTS[: 1 + i % 3]} for i in range(24)]
    cfg = dataclasses.replace(base_cfg, batch_size=64, max_wait_ms=200.0)
    try:
        responses = asyncio.run(asyncio.wait_for(post_concurrently(create_app(scorer, cfg), bodies), 60))
    finally:
        hook.remove()
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert sum(calls) == sum(len(b["query"]) for b in bodies) and len(calls) < len(bodies)
    for body, response in zip(bodies, responses):
        want = reference_rewards(scorer.model, scorer.tokenizer, body["query"])
        torch.testing.assert_close(torch.tensor(response.json()["rewards"]), want, atol=1e-5, rtol=1e-5)


def test_without_batching_each_request_is_its_own_model_call(scorer, base_cfg):
    calls: list[int] = []
    hook = scorer.model.transformer.register_forward_hook(lambda mod, args, out: calls.append(len(out[0])))
    bodies = [{"query": QUERIES[: 1 + i % 3]} for i in range(6)]
    cfg = dataclasses.replace(base_cfg, batch_size=64, max_wait_ms=200.0, disable_batching=True)
    try:
        responses = asyncio.run(asyncio.wait_for(post_concurrently(create_app(scorer, cfg), bodies), 60))
    finally:
        hook.remove()
    assert [r.status_code for r in responses] == [200] * 6
    assert sorted(calls) == sorted(len(b["query"]) for b in bodies)


def chunks(data: bytes, size: int = 256):
    """A generator body: httpx sends it chunked, with no Content-Length to check up front."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


BIG = json.dumps({"query": ["good " * 400]}).encode()
JSON = {"Content-Type": "application/json"}
MALFORMED = {
    "not_json": (dict(content=b'{"query": [', headers=JSON), 400, "json_invalid"),
    "query_not_a_list": (dict(json={"query": "a text"}), 422, "list_type"),
    "query_of_numbers": (dict(json={"query": [1, 2]}), 422, "string_type"),
    "prompts_not_a_list": (dict(json={"query": ["a"], "prompts": "p"}), 422, "list_type"),
    "no_query": (dict(json={"text": ["a"]}), 422, "missing"),
    "top_level_list": (dict(json=[["a"]]), 422, "model_attributes_type"),
    "empty_query": (dict(json={"query": []}), 422, "too_short"),
    "lone_surrogate": (
        dict(content=b'{"query": ["a", "b\\ud800c"]}', headers=JSON),
        422,
        "text 1 is not valid Unicode",
    ),
    "surrogate_prompt": (dict(content=b'{"query": ["a"], "prompts": ["\\udfff"]}', headers=JSON), 422, "not valid"),
    "too_many_texts": (dict(json={"query": ["a"] * 5}), 413, "--max_texts_per_request is 4"),
    "content_length_too_large": (dict(content=BIG, headers=JSON), 413, "--max_body_bytes"),
    "chunked_body_too_large": (dict(content=chunks(BIG), headers=JSON), 413, "--max_body_bytes"),
    "not_declared_json": (dict(content=b'{"query": ["a"]}', headers={"Content-Type": "text/plain"}), 415, "JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(make_client, scorer, case):
    client = make_client(max_texts_per_request=4, max_body_bytes=1024)
    kwargs, status, needle = MALFORMED[case]
    response = client.post("/get_reward", **kwargs)
    assert response.status_code == status, response.text
    assert needle in response.text
    got = rewards_of(client, query=QUERIES[:2])
    torch.testing.assert_close(got, reference_rewards(scorer.model, scorer.tokenizer, QUERIES[:2]), atol=1e-5, rtol=0)


def test_api_key_is_required_except_on_health_and_docs(make_client):
    client = make_client(api_key="s3cret", max_body_bytes=1024)
    body = {"query": ["a good man"]}
    assert client.post("/get_reward", json=body).status_code == 401
    wrong = client.post("/get_reward", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.text
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/get_reward", json=body, headers={"X-API-Key": "nope"}).status_code == 401
    # The key is checked before the body is read: no size or validation hint leaks to a caller without it.
    assert client.post("/get_reward", content=BIG, headers=JSON).status_code == 401
    assert client.post("/get_reward", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/get_reward", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_health_and_openapi_docs(make_client, scorer):
    client = make_client()
    rewards_of(client, query=["a"])
    health = client.get("/health").json()
    assert health["device"] == "cpu" and health["model"] == scorer.name and health["batching"] is True
    assert health["queue_depth"] == 0 and health["model_calls"] >= 1
    spec = client.get("/openapi.json").json()
    assert "/get_reward" in spec["paths"] and "/health" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_a_failing_model_answers_500_and_the_server_goes_on(make_client):
    def score_texts(texts):
        if "boom" in texts:
            raise RuntimeError("CUDA out of memory (simulated)")
        return [1.0] * len(texts)

    fake = SimpleNamespace(score_texts=score_texts, name="fake", device="cpu", stats=None)
    client = make_client(scorer=fake)
    failed = client.post("/get_reward", json={"query": ["boom"]})
    assert failed.status_code == 500 and "out of memory" in failed.json()["detail"]
    assert rewards_of(client, query=["fine", "ok"]).tolist() == [1.0, 1.0]


def test_a_failing_text_fails_only_its_own_request_in_a_shared_batch(base_cfg):
    """Requests merged into one model call: the call fails because of one request's text, the batch is scored
    again request by request, and only that request gets the 500."""
    calls: list[list[str]] = []

    def score_texts(texts):
        calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("tokenizer exploded (simulated)")
        return [float(len(t)) for t in texts]

    fake = SimpleNamespace(score_texts=score_texts, name="fake", device="cpu", stats=None, max_len=32)
    bodies = [{"query": ["a" * (i + 1), "bb"]} for i in range(7)]
    bodies.insert(3, {"query": ["fine", "boom"]})
    cfg = dataclasses.replace(base_cfg, batch_size=64, max_wait_ms=500.0)
    responses = asyncio.run(asyncio.wait_for(post_concurrently(create_app(fake, cfg), bodies), 60))
    assert [r.status_code for r in responses] == [200, 200, 200, 500, 200, 200, 200, 200]
    assert "tokenizer exploded" in responses[3].json()["detail"]
    for body, response in zip(bodies, responses):
        if response.status_code == 200:
            assert response.json()["rewards"] == [float(len(t)) for t in body["query"]]
    assert len(calls[0]) == 16  # the merged call, then one call per request
    assert sorted(map(tuple, calls[1:])) == sorted(tuple(b["query"]) for b in bodies)


def test_invalid_text_beside_63_ordinary_requests_fails_alone(scorer, base_cfg):
    """What a hostile client could do to the others: one lone surrogate among 64 concurrent requests."""
    bodies = [{"query": [FULL[i % 4]]} for i in range(63)]
    cfg = dataclasses.replace(base_cfg, batch_size=64, max_wait_ms=200.0)

    async def send():
        app = create_app(scorer, cfg)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                bad = client.post("/get_reward", content=b'{"query": ["a \\ud800"]}', headers=JSON)
                return await asyncio.gather(bad, *(client.post("/get_reward", json=b) for b in bodies))

    bad, *good = asyncio.run(asyncio.wait_for(send(), 120))
    assert bad.status_code == 422 and "not valid Unicode" in bad.text
    assert [r.status_code for r in good] == [200] * 63
    want = reference_rewards(scorer.model, scorer.tokenizer, FULL)
    got = torch.tensor([r.json()["rewards"][0] for r in good[:4]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
