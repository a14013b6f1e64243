"""RemoteRewardModel against a mock transport: chunking, retries, and clear errors with the server's message."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from repulse.infra.errors import UserError
from repulse.serving.client import RemoteRewardModel, reward_url


def remote(handler, **kwargs) -> RemoteRewardModel:
    model = RemoteRewardModel("127.0.0.1:1", backoff_s=0.0, **kwargs)
    model._client = httpx.Client(transport=httpx.MockTransport(handler), headers=model._client.headers)
    return model


def test_url_forms():
    assert reward_url("127.0.0.1:5000") == "http://127.0.0.1:5000/get_reward"
    assert reward_url("http://h:1/") == "http://h:1/get_reward"
    assert reward_url("https://h/x/get_reward") == "https://h/x/get_reward"


def test_sends_the_forks_protocol_in_chunks_with_the_key():
    """query = the full texts (prompt + response, joined by the client), prompts beside them."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((body, request.headers.get("authorization")))
        return httpx.Response(200, json={"rewards": [float(len(q)) for q in body["query"]]})

    rm = remote(handler, api_key="k", max_texts_per_request=2)
    out = rm(["a", "bb", "ccc"], prompts=["p", "q", "r"])
    assert out.dtype == torch.float32 and out.tolist() == [2.0, 3.0, 4.0]
    assert [b["query"] for b, _ in seen] == [["pa", "qbb"], ["rccc"]] and seen[1][0]["prompts"] == ["r"]
    assert {auth for _, auth in seen} == {"Bearer k"}
    seen.clear()
    assert rm(["full text"]).tolist() == [9.0]  # without prompts the texts go as they are
    assert seen == [({"query": ["full text"]}, "Bearer k")]


def test_the_key_can_come_from_the_environment(monkeypatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"rewards": [1.0]})

    monkeypatch.setenv("REPULSE_RM_API_KEY", "from-env")
    remote(handler)(["a"])
    remote(handler, api_key="explicit")(["a"])
    monkeypatch.delenv("REPULSE_RM_API_KEY")
    remote(handler)(["a"])
    assert seen == ["Bearer from-env", "Bearer explicit", None]


def test_retries_unavailable_then_succeeds():
    answers = iter([httpx.Response(503, json={"detail": "busy"}), httpx.Response(200, json={"rewards": [0.5]})])
    assert remote(lambda request: next(answers), retries=1)(["x"]).tolist() == [0.5]


def test_client_errors_carry_the_server_message_and_are_not_retried():
    calls = []

    def handler(request):
        calls.append(1)
        detail = [{"loc": ["body", "query"], "msg": "List should have at least 1 item", "type": "too_short"}]
        return httpx.Response(422, json={"detail": detail})

    with pytest.raises(UserError, match=r"HTTP 422: query: List should have at least 1 item"):
        remote(handler, retries=3)(["x"])
    assert len(calls) == 1


def test_connection_failure_is_a_clear_error_after_retries():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("Connection refused")

    with pytest.raises(UserError, match=r"failed after 3 attempts \(ConnectError: Connection refused\).*serve_rm"):
        remote(handler, retries=2)(["x"])
    assert len(calls) == 3


def test_a_wrong_answer_is_reported():
    with pytest.raises(UserError, match="sent 2 rewards for 1 texts"):
        remote(lambda request: httpx.Response(200, json={"rewards": [1.0, 2.0]}))(["x"])
    with pytest.raises(UserError, match="no 'rewards' list"):
        remote(lambda request: httpx.Response(200, text="<html>"))(["x"])
