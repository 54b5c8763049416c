"""The order rules, written once: the mutations enforce them and the read-only prechecks ask them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar


class _Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


RowT = TypeVar("RowT", bound=_Row)

CHANGEABLE = ("pending", "processing")
MAX_QUANTITY = 100


class OrderError(Exception):
    """A refusal the model repeats to the customer (not found, wrong status, no stock)."""


class DatabaseBusy(OrderError):
    """Another connection kept the database locked past the busy timeout; the caller may retry."""

    def __init__(self) -> None:
        super().__init__("the order database is busy, please try again")


class DatabaseUnavailable(OrderError):
    """The database server cannot be reached right now; the service recovers when it returns."""

    def __init__(self) -> None:
        super().__init__("the order database is unavailable right now, please try again in a moment")


def not_found(order_id: str) -> OrderError:
    # The same words whether the order is absent, another customer's or another tenant's.
    return OrderError(f"I could not find order {order_id} for that email")


def require_status(order: dict[str, Any], allowed: Sequence[str], action: str) -> None:
    if order["status"] not in allowed:
        raise OrderError(
            f"order {order['order_id']} is {order['status']}, so it can no longer {action};"
            f" that is only possible while an order is {' or '.join(allowed)}"
        )


def merge_items(items: Sequence[tuple[str, int]]) -> dict[str, int]:
    if not items:
        raise OrderError("an order needs at least one item")
    wanted: dict[str, int] = {}
    for sku, quantity in items:
        sku = sku.strip().upper()
        if not 1 <= quantity <= MAX_QUANTITY:
            raise OrderError(f"the quantity of {sku} must be between 1 and {MAX_QUANTITY}")
        wanted[sku] = wanted.get(sku, 0) + quantity
        if wanted[sku] > MAX_QUANTITY:
            raise OrderError(f"at most {MAX_QUANTITY} of {sku} can be ordered at once")
    return wanted


def may_change_address(order: dict[str, Any]) -> None:
    require_status(order, CHANGEABLE, "have its shipping address changed")


def may_cancel(order: dict[str, Any]) -> None:
    if order["status"] == "cancelled":
        raise OrderError(f"order {order['order_id']} is already cancelled")
    require_status(order, CHANGEABLE, "be cancelled")


def may_return(order: dict[str, Any]) -> None:
    if order["status"] == "return_requested":
        raise OrderError(f"a return has already been requested for order {order['order_id']}")
    if order["status"] != "delivered":
        raise OrderError(
            f"order {order['order_id']} is {order['status']}; a return can only be requested"
            " once the order has been delivered"
        )


def require_stock(product: RowT | None, sku: str, quantity: int) -> RowT:
    """`product` is a row with name and stock, or None when the sku is unknown; returns the row."""
    if product is None:
        raise OrderError(f"there is no product with SKU {sku}")
    if product["stock"] < quantity:
        if product["stock"] == 0:
            raise OrderError(f"{product['name']} ({sku}) is out of stock")
        raise OrderError(
            f"only {product['stock']} of {product['name']} ({sku}) are in stock,"
            f" but {quantity} were asked for"
        )
    return product


# The rule each order change must pass, by change.
CHANGE_RULES: dict[str, Callable[[dict[str, Any]], None]] = {
    "update_shipping_address": may_change_address,
    "cancel_order": may_cancel,
    "request_return": may_return,
}
