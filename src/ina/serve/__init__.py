"""Serving: `ina serve` runs a base model and its adapters behind an OpenAI-compatible API and a web UI.

Two sub-rooms, imports pointing one way (api -> engine):

    engine/      the model, adapters, batching, KV cache, sampling, incremental detokenising; no web framework
    api/         the FastAPI app factory ``create_app(engine, settings)``: routers, streaming, middleware,
                 response models, the one error envelope; it calls only the engine's public methods
    settings.py  ``ServeSettings``: every option once (the command line's flags are generated from it)
    server.py    ``LiveServer``: uvicorn in a background thread (tests, notebooks)
    cli.py       ``ina serve``
    static/      the web UI
"""
