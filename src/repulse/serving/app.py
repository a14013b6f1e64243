"""The FastAPI app of serve_rm: POST /get_reward, GET /health, and FastAPI's OpenAPI docs (/docs, /openapi.json).

The protocol is the fork's (OpenRLHF's): `query` holds the full texts (prompt + response) and is what gets
scored; `prompts`, which OpenRLHF clients send beside it, is accepted and not used.

Status codes: 400 malformed JSON or Content-Length, 401 missing/wrong API key, 413 body over --max_body_bytes or
more texts than --max_texts_per_request, 415 a body not sent as application/json, 422 wrong types, an empty
`query`, or text that is not valid Unicode (a lone surrogate), 500 the model failed on this request's texts
(the server goes on; other requests of the same batch are scored on their own), 503 shutting down. Error
bodies follow FastAPI: {"detail": ...}.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from repulse.infra.errors import require_package

# Importing this module is what needs the [serve] extra: say so in one line instead of a ModuleNotFoundError.
require_package("fastapi", "serve", "serve_rm")

from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from fastapi.encoders import jsonable_encoder  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, Field, field_validator  # noqa: E402

from repulse import __version__  # noqa: E402
from repulse.config.serve import ServeArgs  # noqa: E402
from repulse.serving.batcher import BatcherClosedError, DynamicBatcher  # noqa: E402
from repulse.serving.guards import APIKeyMiddleware, BodyLimitMiddleware  # noqa: E402
from repulse.serving.scorer import RewardScorer  # noqa: E402

log = logging.getLogger("repulse")


class RewardRequest(BaseModel):
    query: list[str] = Field(
        min_length=1,
        description="The texts to score, each the full text the reward model reads (prompt + response).",
    )
    prompts: list[str] | None = Field(
        default=None,
        description="Accepted for OpenRLHF clients, which send the prompts beside the full texts; not used.",
    )

    @field_validator("query", "prompts")
    @classmethod
    def valid_unicode(cls, texts: list[str] | None) -> list[str] | None:
        # JSON can carry lone surrogates ("\ud800"); no tokenizer can encode them. Refused here, with the
        # request, instead of failing a model call shared with other clients.
        for i, text in enumerate(texts or []):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"text {i} is not valid Unicode ({err.reason} at character {err.start})") from err
        return texts


class RewardResponse(BaseModel):
    rewards: list[float] = Field(description="One reward per query, in order (normalised if the server says so).")


class PromptCheck:
    """Warns once when a client seems to send responses in `query` and prompts beside them (query = response,
    the protocol of earlier repulse versions): the server scores `query` alone, so such rewards miss the prompt."""

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, request: RewardRequest) -> None:
        if self.warned or not request.prompts or len(request.prompts) != len(request.query):
            return
        if all(q.startswith(p) for p, q in zip(request.prompts, request.query, strict=True)):
            return
        self.warned = True
        log.warning(
            "get_reward: a query does not start with its prompt; `query` must hold the full texts "
            "(prompt + response), which is what is scored ('prompts' is not used)"
        )


class HealthResponse(BaseModel):
    status: str
    model: str
    device: str
    queue_depth: int = Field(description="Texts waiting for a model call.")
    model_calls: int
    batching: bool
    batch_size: int
    max_wait_ms: float
    max_len: int = Field(description="Tokens scored per text (texts are truncated to them, as train_rm does).")
    normalized: bool


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI answers 422 for everything; unparsable JSON is a 400 and a body not declared JSON a 415.
    The errors go back without the offending input (it may be large, or text that cannot be encoded)."""
    errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(status_code=400, content={"detail": jsonable_encoder(errors)})
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and not is_json_type(content_type):
        # FastAPI parses JSON only when the request says so (no CSRF through header-less browser posts).
        detail = f"send the body as JSON with 'Content-Type: application/json' (got {content_type or 'none'!r})"
        return JSONResponse(status_code=415, content={"detail": detail})
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def is_json_type(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def create_app(scorer: RewardScorer, cfg: ServeArgs) -> FastAPI:
    """The app around a loaded scorer; the batcher starts and stops with the app's lifespan."""
    batcher = DynamicBatcher(
        scorer.score_texts,
        batch_size=cfg.batch_size,
        max_wait_ms=cfg.max_wait_ms,
        disable_batching=cfg.disable_batching,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        # uvicorn calls this after the in-flight requests are answered; close() drains what is left.
        await batcher.close()

    app = FastAPI(
        title="repulse reward model server",
        version=__version__,
        description="Scores texts with a reward model; requests from many clients are batched dynamically.",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.scorer, app.state.settings = batcher, scorer, cfg
    app.add_exception_handler(RequestValidationError, validation_error)
    add_routes(app, scorer, batcher, cfg)
    # Starlette runs the middleware added last first: the key is checked before the body is even read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    if cfg.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=cfg.api_key)
    return app


def add_routes(app: FastAPI, scorer: RewardScorer, batcher: DynamicBatcher, cfg: ServeArgs) -> None:
    prompt_check = PromptCheck()

    @app.post("/get_reward", response_model=RewardResponse)
    async def get_reward(request: RewardRequest) -> RewardResponse:
        """Rewards of the query texts (full texts: prompt + response), read at each text's last token."""
        if len(request.query) > cfg.max_texts_per_request:
            raise HTTPException(
                413,
                f"{len(request.query)} texts in one request; --max_texts_per_request is {cfg.max_texts_per_request}",
            )
        prompt_check(request)
        start = time.perf_counter()
        try:
            rewards = await batcher.submit(request.query)
        except BatcherClosedError as err:
            raise HTTPException(503, str(err)) from err
        except Exception as err:
            raise HTTPException(500, f"reward model failed: {type(err).__name__}: {err}") from err
        if cfg.log_requests:
            log.info("get_reward: %d texts in %.1f ms", len(rewards), 1000 * (time.perf_counter() - start))
        return RewardResponse(rewards=rewards)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness and load: the model, its device and the number of texts waiting (open without the key)."""
        return HealthResponse(
            status="ok",
            model=scorer.name,
            device=str(scorer.device),
            queue_depth=batcher.queued_texts,
            model_calls=batcher.model_calls,
            batching=not cfg.disable_batching,
            batch_size=cfg.batch_size,
            max_wait_ms=cfg.max_wait_ms,
            max_len=scorer.max_len,
            normalized=scorer.stats is not None,
        )
