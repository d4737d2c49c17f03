"""Serving: `ina serve` runs a base model and its adapters behind an OpenAI-compatible API and a web UI.

Split by role: ``settings`` (validated options), ``schemas`` (request/response models), ``errors``
(one error envelope), ``engine`` (model, adapters and batching; no web framework), ``app`` (the
FastAPI app factory ``create_app(engine, settings)``), ``cli`` and ``static/`` (the web UI).
"""
