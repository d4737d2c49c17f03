"""The serving API: OpenAI-compatible routes, the seed's ``/completion``, attention maps and the web UI.

It calls only the public methods of `ina.serve.engine.Engine`.

    app.py         create_app(engine, settings): routers, middleware, error handlers, static files
    routes/        one router per family: models and health, completions, instruction, attention, UI
    schemas.py     request models (pydantic): strict, no field accepted and ignored
    responses.py   response models (pydantic): the OpenAI shapes every route answers with
    streaming.py   a request's generations, and server-sent events
    deps.py        what routes receive (engine, settings) and the server's limits on requests
    bodies.py      request bodies parsed and validated off the event loop (OffLoopBody, off_loop)
    middleware.py  API key and request size
    errors.py      the one error envelope and the handlers that answer with it
    protocol.py    uvicorn's HTTP protocol, answering requests it cannot parse with the envelope too
    events.py      what clients do to the server, logged once per interval per kind, not per connection
"""

from ina.serve.api.app import create_app

__all__ = ["create_app"]
