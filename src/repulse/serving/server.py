"""Run the app under uvicorn with a graceful stop: SIGINT/SIGTERM close the listener, in-flight requests are
answered, queued batches finish, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading

from repulse.config.serve import ServeArgs
from repulse.infra.errors import UserError, require_package

log = logging.getLogger("repulse")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long to finish before they are cancelled


def make_server(app, cfg: ServeArgs):
    """A uvicorn.Server for `app` on cfg.host:cfg.port (not started)."""
    require_package("uvicorn", "serve", "serve_rm")
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal once it has shut down, so SIGTERM would end the process with 143 and
            # SIGINT with a KeyboardInterrupt. A server stopped on purpose that answered everything exits 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="info",
        access_log=cfg.log_requests,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # The batcher needs one loop and one process; workers > 1 would load one model copy each.
        workers=1,
    )
    return GracefulServer(config)


def serve_forever(app, cfg: ServeArgs) -> None:
    """Block until SIGINT/SIGTERM, then return after the graceful shutdown."""
    if cfg.is_exposed() and not cfg.api_key:
        log.warning("--host %s is reachable from other machines and no --api_key is set", cfg.host)
    server = make_server(app, cfg)
    # torch + transformers leave ~400k long-lived objects; a full collection walks them all (0.1-0.5 s, a stall
    # of every request in flight). Frozen, they are never scanned again: collections see only request garbage.
    gc.collect()
    gc.freeze()
    try:
        server.run()
    except SystemExit as err:
        # uvicorn logs the reason (e.g. the port is taken) and calls sys.exit(1); make it a one-line user error.
        raise UserError(f"could not start the server on {cfg.host}:{cfg.port} (see the log above)") from err
    log.info("serve_rm stopped")
