"""The reward-model HTTP server (serve_rm) and its client.

    scorer.py  texts -> rewards with a loaded model (tokenize and truncate as train_rm does)
    batcher.py dynamic batching of concurrent requests, one model call at a time in a worker thread
    guards.py  API key and body-size middleware
    app.py     the FastAPI app (needs the [serve] extra), server.py uvicorn with a graceful stop
    client.py  RemoteRewardModel, used by --remote_rm_url

Nothing is imported here, so `import repulse.serving.client` works without FastAPI installed.
"""
