"""serve_rm: a reward model behind HTTP, with dynamic batching across clients.

POST /get_reward {"query": [full texts], "prompts": [...] (optional, not used)} -> {"rewards": [...]}: the fork's
protocol, where each query is the whole text (prompt + response). GET /health reports the model, device and queue
depth; /docs holds the OpenAPI page. Each text gets EOS appended and is cut to --max_len tokens (at most the
model's positions), as train_rm tokenizes it; the model config's normalization applies (--normalize_reward
forces it). Binds 127.0.0.1 unless --host says otherwise; SIGINT/SIGTERM finish the requests in flight and
exit 0. The API key comes from REPULSE_RM_API_KEY (or --api_key, which other local users can read in `ps`).

    repulse serve_rm                                              # the embedded tiny reward model on :5000
    REPULSE_RM_API_KEY=KEY repulse serve_rm --reward_pretrain runs/rm/final --batch_size 32 --max_wait_ms 5
    curl -s 127.0.0.1:5000/get_reward -H 'Content-Type: application/json' \\
        -H 'Authorization: Bearer KEY' -d '{"query": ["This man is a kind man ."]}'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import DataArgs, ModelArgs
from repulse.config.parser import parse_groups
from repulse.config.reward import RewardArgs
from repulse.config.serve import API_KEY_ENV, ServeArgs

log = logging.getLogger("repulse")


class ServeConfig(NamedTuple):
    model: ModelArgs
    reward: RewardArgs
    data: DataArgs
    serve: ServeArgs


GROUPS = (ModelArgs, RewardArgs, DataArgs, ServeArgs)
ONLY = {
    ModelArgs: ["bf16", "flash_attn", "load_in_4bit"],
    RewardArgs: ["reward_pretrain", "value_head_prefix", "normalize_reward"],
    DataArgs: ["max_len"],
}
DEFAULTS = {"max_len": 2048}


def parse_args(argv: Sequence[str] | None = None) -> ServeConfig:
    return ServeConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY, defaults=DEFAULTS))


def serve(config: ServeConfig) -> None:
    from repulse.infra.errors import require_package

    # Checked before the model loads, so a missing extra costs no waiting.
    require_package("fastapi", "serve", "serve_rm")
    require_package("uvicorn", "serve", "serve_rm")
    from repulse.serving.app import create_app
    from repulse.serving.scorer import load_scorer
    from repulse.serving.server import serve_forever

    cfg = with_api_key(config.serve)
    scorer = load_scorer(config.model, config.reward, config.data.max_len, cfg)
    app = create_app(scorer, cfg)
    mode = "off (one request per model call)" if cfg.disable_batching else f"up to {cfg.batch_size} texts"
    log.info(
        "serving on http://%s:%d (batching %s, max wait %.1f ms, API key %s)",
        cfg.host,
        cfg.port,
        mode,
        cfg.max_wait_ms,
        "required" if cfg.api_key else "off",
    )
    serve_forever(app, cfg)


def with_api_key(cfg: ServeArgs) -> ServeArgs:
    """The settings with the key from REPULSE_RM_API_KEY when --api_key is not given; the key is kept out of
    the log either way."""
    import dataclasses
    import os

    from repulse.infra.secrets import register_secret

    if cfg.api_key:
        log.warning("--api_key on the command line is visible to other local users (ps); prefer %s", API_KEY_ENV)
    else:
        key = os.environ.get(API_KEY_ENV, "").strip()
        cfg = dataclasses.replace(cfg, api_key=key or None)
    register_secret(cfg.api_key)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: serve(parse_args(a)), argv, "serve_rm")


if __name__ == "__main__":
    raise SystemExit(main())
