"""The order workflow of the Flask example: charge, wait for an approval, then ship, or refund and revert.

The steps stand in for calls to a payment provider and a warehouse; each
prints the process it runs in, so you can see that a recorded step does not
run again after a restart.
"""

from __future__ import annotations

import os
from datetime import timedelta

from substantial import Context, Retry, workflow


def charge_card(order_id: str, amount: int) -> str:
    print(f"step charge: order {order_id}, amount {amount} (process {os.getpid()})", flush=True)
    return f"charge-{order_id}-{amount}"


def refund(order_id: str) -> str:
    print(f"step refund: order {order_id} (process {os.getpid()})", flush=True)
    return f"refund-{order_id}"


def ship(order_id: str) -> str:
    print(f"step ship: order {order_id} (process {os.getpid()})", flush=True)
    return f"shipment-{order_id}"


@workflow()
def order(c: Context, order_id: str, amount: int):
    charge = yield c.save(
        lambda: charge_card(order_id, amount), compensate_with=lambda: refund(order_id), retry=Retry(max_attempts=5)
    )
    try:
        approved = yield c.receive("approval", timeout=timedelta(days=7))  # no thread is held meanwhile
    except TimeoutError:
        approved = False
    if not approved:
        yield c.revert()  # runs the compensations (the refund); the run ends reverted
    shipment = yield c.save(lambda: ship(order_id))
    return {"order": order_id, "approved": True, "charge": charge, "shipment": shipment}
