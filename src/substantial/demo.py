"""The workflow of ``substantial demo``, and the conductor its worker processes serve.

``substantial demo`` starts its workers as ``python -m substantial worker
substantial.demo:conductor`` with ``$SUBSTANTIAL_URL`` naming the demo's
folder. Every step also appends a line to ``steps.log`` in that folder, so the
demo can count how many times each step really ran.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from substantial import defaults
from substantial.conductor import Conductor
from substantial.context import Context
from substantial.workflow import workflow

#: Where each step execution is appended, in the store's folder: ``<run id> <step> <pid>``.
STEPS_FILE = "steps.log"
#: The durable sleep between the charge and the approval, in seconds.
SLEEP = 2.0


def _store_folder() -> Path | None:
    """The folder of the store ``Conductor()`` uses here, if it is a ``file:`` one."""
    url = urlparse(os.environ.get("SUBSTANTIAL_URL") or defaults.URL)
    return Path(url.path) if url.scheme == "file" and url.path else None


def _step(run_id: str, name: str, value: str) -> str:
    """A step's side effect (a payment API call, an email...): here, a line printed and a line in steps.log."""
    print(f"  worker pid {os.getpid()}: step {name!r} runs -> {value}", flush=True)
    folder = _store_folder()
    if folder is not None:
        with open(folder / STEPS_FILE, "a", encoding="utf-8") as steps:
            steps.write(f"{run_id} {name} {os.getpid()}\n")
    return value


@workflow("substantial.demo.order")
def order(c: Context, order_id: str, amount: int) -> Generator[Any, Any, dict[str, Any]]:
    """The quick-start workflow: two recorded steps, a durable sleep, an event, a last step."""
    reservation = yield c.save(lambda: _step(c.run_id, "reserve", f"reservation-{order_id}"), key="reserve")
    charge = yield c.save(lambda: _step(c.run_id, "charge", f"charge-{order_id}-{amount}"), key="charge")
    yield c.sleep(SLEEP)  # a durable timer: no thread waits, and it outlives the worker that set it
    approved = yield c.receive("approval")  # waits durably for run.send("approval", ...)
    shipment = None
    if approved:
        shipment = yield c.save(lambda: _step(c.run_id, "ship", f"shipment-{order_id}"), key="ship")
    return {"reservation": reservation, "charge": charge, "approved": approved, "shipment": shipment}


def __getattr__(name: str) -> Conductor:
    """``conductor``: ``Conductor()`` on ``$SUBSTANTIAL_URL``, with ``order`` registered.

    It is made on first use rather than at import, so that importing this
    module for its workflow (as ``substantial demo`` does) creates no store in
    the working directory. ``substantial worker substantial.demo:conductor``
    reads it as any module attribute.
    """
    if name != "conductor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    conductor = Conductor()  # $SUBSTANTIAL_URL, else file:.substantial
    conductor.register(order)
    globals()["conductor"] = conductor  # one conductor per process
    return conductor
