"""The HTTP service: ``create_app(runner)`` builds a FastAPI app with ``/generate``, ``/stream``
(server-sent events), ``/health``, ``/ready`` and a playground page at ``/``.

Needs the ``server`` extra (``pip install gridgen[server]``): FastAPI (its ``fastapi.sse`` frames the events) and uvicorn.
``gridgen serve`` runs it with uvicorn.
"""

from .app import create_app, error_body

__all__ = ["create_app", "error_body"]
