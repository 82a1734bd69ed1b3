"""POST /orders starts an order workflow, POST /orders/ID/approval sends the approval, GET /orders/ID shows it."""

from __future__ import annotations

import json
from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.workflows import order
from substantial import InvalidRunId, RunHandle, RunNotFound
from substantial.contrib.django import get_conductor


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    try:
        data = json.loads(request.body)
        order_id, amount = str(data["order_id"]), int(data["amount"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'send {"order_id": "...", "amount": 30}'}, status=400)
    # The run id makes the POST idempotent: posting the same order again returns its run.
    run = get_conductor().start(order, order_id, amount, run_id=f"order-{order_id}")
    return JsonResponse(_show(run), status=202)


@csrf_exempt
@require_POST
def approve(request: HttpRequest, order_id: str) -> JsonResponse:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": 'send {"approved": true}'}, status=400)
    run = _run(order_id)
    if run.status().finished:
        return JsonResponse({"error": f"order {order_id} has finished"}, status=409)
    run.send("approval", bool(data.get("approved", True)))
    return JsonResponse({"run_id": run.id, "sent": "approval"}, status=202)


@require_GET
def show_order(request: HttpRequest, order_id: str) -> JsonResponse:
    return JsonResponse(_show(_run(order_id)))


def _run(order_id: str) -> RunHandle:
    try:
        return get_conductor().get(f"order-{order_id}")
    except (RunNotFound, InvalidRunId):
        raise Http404(f"no order {order_id}") from None


def _show(run: RunHandle) -> dict[str, Any]:
    info = run.info()
    return {
        "run_id": run.id,
        "status": info.status.value,
        "waiting_for": info.waiting_for,
        "result": info.result,
        "error": f"{info.error.type}: {info.error.message}" if info.error else None,
    }
