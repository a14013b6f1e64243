"""serve_rm: a reward model behind HTTP, with dynamic batching across clients.

POST /get_reward {"query": [texts], "prompts": [...] (optional)} -> {"rewards": [...]}; with prompts each scored
text is prompt + query, as train_rm builds it. GET /health reports the model, device and queue depth; /docs holds
the OpenAPI page. Texts longer than --max_len lose tokens from the left (the reward is read at the last token),
EOS is appended as in training, and the model config's normalization applies (--normalize_reward forces it).
Binds 127.0.0.1 unless --host says otherwise; SIGINT/SIGTERM finish the requests in flight and exit 0.

    repulse serve_rm                                              # the embedded tiny reward model on :5000
    repulse serve_rm --reward_pretrain runs/rm/final --port 5000 --batch_size 32 --max_wait_ms 5 --api_key KEY
    curl -s 127.0.0.1:5000/get_reward -H 'Content-Type: application/json' \\
        -H 'Authorization: Bearer KEY' -d '{"query": [" a kind man ."], "prompts": ["This man is"]}'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from repulse.cli.runner import run_cli
from repulse.config.parser import parse_groups
from repulse.config.serve import ServeArgs

log = logging.getLogger("repulse")


def parse_args(argv: Sequence[str] | None = None) -> ServeArgs:
    (cfg,) = parse_groups((ServeArgs,), argv, description=__doc__)
    return cfg


def serve(cfg: ServeArgs) -> None:
    from repulse.infra.errors import require_package

    # Checked before the model loads, so a missing extra costs no waiting.
    require_package("fastapi", "serve", "serve_rm")
    require_package("uvicorn", "serve", "serve_rm")
    from repulse.serving.app import create_app
    from repulse.serving.scorer import load_scorer
    from repulse.serving.server import serve_forever

    scorer = load_scorer(cfg)
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: serve(parse_args(a)), argv, "serve_rm")


if __name__ == "__main__":
    raise SystemExit(main())
