"""Settings of the Django example: one app, no database, runs stored on local files.

    cd examples/django_project
    python manage.py runserver                 # a worker thread in the server process
    gunicorn --workers 2 --preload shop.wsgi   # a worker thread in each process, started at its first request

    curl -X POST localhost:8000/orders -H 'content-type: application/json' -d '{"order_id": "o-1", "amount": 30}'
    curl localhost:8000/orders/o-1
    curl -X POST localhost:8000/orders/o-1/approval -H 'content-type: application/json' -d '{"approved": true}'
    curl localhost:8000/orders/o-1

To keep the worker out of the web processes, set ``SUBSTANTIAL_RUN_WORKER=0``
for them and run ``python manage.py substantial_worker`` beside them.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = ["substantial.contrib.django"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # the runs live in Substantial's store, not in a database
USE_TZ = True

SUBSTANTIAL = {
    "URL": os.environ.get("SUBSTANTIAL_URL", f"file:{BASE_DIR / '.substantial'}"),
    "WORKFLOWS": ["shop.workflows"],  # every workflow of that module
    "THREADS": 4,
    "RUN_WORKER": os.environ.get("SUBSTANTIAL_RUN_WORKER", "1") == "1",
}
