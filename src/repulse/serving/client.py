"""A client for serve_rm: `RemoteRewardModel(url)(texts, prompts) -> rewards` (what --remote_rm_url uses).

It speaks the fork's protocol, as OpenRLHF's own clients do: `query` holds the full texts that are scored and
`prompts` goes beside them (the server does not use it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from repulse.config.serve import API_KEY_ENV
from repulse.infra.errors import UserError, require_package

RETRY_STATUSES = (502, 503, 504)  # a proxy or a restarting server: worth another try; 4xx/500 are not


def reward_url(url: str) -> str:
    """The /get_reward endpoint from a server address ('127.0.0.1:5000', 'http://host:5000/', or the full URL)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url if url.endswith("/get_reward") else url + "/get_reward"


def server_message(response) -> str:
    """The server's own explanation: FastAPI's 'detail' (a string, or validation errors) or the raw text."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(detail, list):
        parts = []
        for err in detail:
            loc = ".".join(str(x) for x in err.get("loc", []) if x != "body") if isinstance(err, dict) else ""
            msg = err.get("msg", err) if isinstance(err, dict) else err
            parts.append(f"{loc}: {msg}" if loc else str(msg))
        return "; ".join(parts)
    return str(detail)


class RemoteRewardModel:
    """Rewards from a running `repulse serve_rm`, as a float32 tensor [len(queries)].

    Connection failures, timeouts and 502/503/504 are retried `retries` times with exponential back-off; then,
    and on any other non-200 answer, a UserError carries the server's message. Long lists are sent in chunks
    of `max_texts_per_request` (keep it at or below the server's flag of the same name).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        *,
        max_texts_per_request: int = 256,
        backoff_s: float = 0.5,
    ) -> None:
        require_package("httpx", "serve", "RemoteRewardModel (--remote_rm_url)")
        import httpx

        if retries < 0 or max_texts_per_request < 1:
            raise ValueError("retries must be >= 0 and max_texts_per_request >= 1")
        self.url = reward_url(url)
        self.retries, self.backoff_s, self.max_texts = retries, backoff_s, max_texts_per_request
        api_key = api_key or os.environ.get(API_KEY_ENV) or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def __call__(self, texts: list[str], prompts: list[str] | None = None) -> torch.Tensor:
        """Rewards of `texts`, the full texts; with `prompts`, `texts` are the responses and each scored text is
        prompt + response (joined here, sent as the fork's `query`, with `prompts` beside it)."""
        if prompts is not None and len(prompts) != len(texts):
            raise ValueError(f"prompts has {len(prompts)} texts but texts has {len(texts)}")
        queries = list(texts) if prompts is None else [p + r for p, r in zip(prompts, texts, strict=True)]
        rewards: list[float] = []
        for start in range(0, len(queries), self.max_texts):
            payload: dict[str, Any] = {"query": queries[start : start + self.max_texts]}
            if prompts is not None:
                payload["prompts"] = list(prompts[start : start + self.max_texts])
            rewards.extend(self._post(payload))
        return torch.tensor(rewards, dtype=torch.float32)

    def _post(self, payload: dict[str, Any]) -> list[float]:
        import httpx

        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as err:  # refused, reset, DNS, timeouts
                failure = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in RETRY_STATUSES:
                failure = f"HTTP {response.status_code}: {server_message(response)}"
                continue
            if response.status_code != 200:
                raise UserError(
                    f"reward server {self.url} answered HTTP {response.status_code}: {server_message(response)}"
                )
            return self._rewards_of(response, len(payload["query"]))
        raise UserError(
            f"reward server {self.url} failed after {self.retries + 1} attempts ({failure}); "
            "is `repulse serve_rm` running there?"
        )

    def _rewards_of(self, response, expected: int) -> list[float]:
        try:
            rewards = response.json()["rewards"]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"reward server {self.url} sent no 'rewards' list: {response.text[:200]!r}") from err
        count = len(rewards) if isinstance(rewards, list) else "no list of"
        if count != expected:
            raise UserError(f"reward server {self.url} sent {count} rewards for {expected} texts")
        return [float(r) for r in rewards]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteRewardModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
