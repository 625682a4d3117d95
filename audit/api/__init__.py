"""The HTTP API: tenants, keys, corpora, head training and batched predictions over FastAPI.

Run it with ``audit serve``, or serve ``create_app()`` with any ASGI server (one worker: the
inference engine batches requests inside the process).
"""

from audit.api.app import create_app
from audit.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
