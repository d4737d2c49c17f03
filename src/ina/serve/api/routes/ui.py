"""``GET /``: the web UI (a single page; its files are served under ``/static``)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter()


def static_dir() -> str:
    """The folder of the web UI's files shipped in the package."""
    return str(resources.files("ina.serve") / "static")


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(f"{static_dir()}/index.html", media_type="text/html")
