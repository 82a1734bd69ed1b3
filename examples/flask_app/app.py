"""A Flask app whose orders are durable workflows.

POST /orders starts an order (charge the card, wait for an approval, ship),
POST /orders/ID/approval sends the approval, GET /orders/ID shows where the
order stands. Runs are stored in ``$SUBSTANTIAL_URL`` (default
``file:.substantial``), so they survive restarts of the server::

    cd examples/flask_app
    flask --app app run                                   # the dev server, reloader or not
    gunicorn --workers 2 --preload 'app:create_app()'     # a worker thread in each process

    curl -X POST localhost:5000/orders -H 'content-type: application/json' -d '{"order_id": "o-1", "amount": 30}'
    curl localhost:5000/orders/o-1
    curl -X POST localhost:5000/orders/o-1/approval -H 'content-type: application/json' -d '{"approved": true}'
    curl localhost:5000/orders/o-1

(gunicorn serves on port 8000.) Every process that serves the app runs a
worker thread, started at its first request; set
``FLASK_SUBSTANTIAL_RUN_WORKER=false`` and run ``flask --app app substantial
worker`` to keep the workers in a process of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, abort, request
from flows import order

from substantial import InvalidRunId, RunHandle, RunNotFound
from substantial.contrib.flask import Substantial, conductor

substantial = Substantial(workflows=[order])
orders = Blueprint("orders", __name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app; settings come from ``FLASK_*`` variables (``FLASK_SUBSTANTIAL_URL``, ...), then ``config``."""
    app = Flask(__name__)
    app.config.from_prefixed_env()
    app.config.update(config or {})
    substantial.init_app(app)
    app.register_blueprint(orders)
    return app


@orders.post("/orders")
def create_order() -> tuple[dict[str, Any], int]:
    data = request.get_json()
    try:
        order_id, amount = str(data["order_id"]), int(data["amount"])
    except (KeyError, TypeError, ValueError):
        abort(400, 'send {"order_id": "...", "amount": 30}')
    # The run id makes the POST idempotent: posting the same order again returns its run.
    run = conductor.start(order, order_id, amount, run_id=f"order-{order_id}")
    return _show(run), 202


@orders.post("/orders/<order_id>/approval")
def approve(order_id: str) -> tuple[dict[str, Any], int]:
    data = request.get_json(silent=True) or {}
    run = _run(order_id)
    if run.status().finished:
        return {"error": f"order {order_id} has finished"}, 409
    run.send("approval", bool(data.get("approved", True)))
    return {"run_id": run.id, "sent": "approval"}, 202


@orders.get("/orders/<order_id>")
def show_order(order_id: str) -> dict[str, Any]:
    return _show(_run(order_id))


def _run(order_id: str) -> RunHandle:
    try:
        run = conductor.get(f"order-{order_id}")
    except (RunNotFound, InvalidRunId):
        abort(404, f"no order {order_id}")
    return run


def _show(run: RunHandle) -> dict[str, Any]:
    info = run.info()
    return {
        "run_id": run.id,
        "status": info.status.value,
        "waiting_for": info.waiting_for,
        "result": info.result,
        "error": f"{info.error.type}: {info.error.message}" if info.error else None,
    }
