"""The API's routes, one router per family; `ina.serve.api.app.create_app` includes them all."""

from ina.serve.api.routes import attention, completions, instruction, models, ui

ROUTERS = (models.router, completions.router, instruction.router, attention.router, ui.router)
