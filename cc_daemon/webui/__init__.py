"""The web workbench's files: the page ``GET /ui/`` serves, shipped inside the package.

Owns: which files the page is made of (every file under ``static/``, found once at import),
the media type each is served as, and reading them. The page itself is plain HTML, CSS and
ES modules with no build step and nothing fetched from elsewhere; how it talks to the
daemon is in ``static/api.js`` and ``static/stream.js``.

Must not: decide who may fetch them or with which headers (the route table and
``transport.policy`` do), or hold anything secret: these files are served without a token.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

STATIC = Path(__file__).parent / "static"
INDEX = "index.html"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

#: Every file of the page by its path under ``/ui/``. A file of another type is not served:
#: ``nosniff`` makes a browser refuse a script or style whose type is wrong.
ASSETS: tuple[str, ...] = tuple(sorted(path.relative_to(STATIC).as_posix() for path in STATIC.rglob("*")
                                       if path.is_file() and path.suffix in MEDIA_TYPES))


@lru_cache(maxsize=None)
def asset(name: str) -> tuple[bytes, str]:
    """The bytes of the page's file ``name`` (one of ``ASSETS``) and its media type."""
    path = STATIC / name
    return path.read_bytes(), MEDIA_TYPES[path.suffix]
