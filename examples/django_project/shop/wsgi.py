"""The WSGI entry point: ``gunicorn shop.wsgi``.

Each process that serves starts its worker thread at its first request, so
``--preload`` is safe: nothing runs before gunicorn forks.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_wsgi_application()
