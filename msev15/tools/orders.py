"""The six order tools of API.md: argument models the model sees, handlers that defer to the repository."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from msev15.mail.documents import return_code
from msev15.mail.render import render_return_instructions
from msev15.mail.sender import Mailer
from msev15.stores.order_rules import MAX_QUANTITY, OrderError, not_found
from msev15.stores.orders import ORDER_PREFIX, OrderRepository
from msev15.tools.registry import Precheck, Tool, ToolArgs, ToolContext, ToolError

log = logging.getLogger(__name__)
_EMAIL_RE = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_ORDER_ID_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]{0,31}$")


def _email(value: str) -> str:
    value = value.strip().lower()
    if len(value) > 254 or not _EMAIL_RE.match(value):
        raise ValueError("must be an email address like name@example.com")
    return value


def _order_id(value: str) -> str:
    # Customers write "1001", "ord-1001" or "#ORD-1001"; the shop's ids look like ORD-1001.
    value = value.strip().lstrip("#").upper()
    if value.isdigit():
        value = ORDER_PREFIX + value
    if not _ORDER_ID_RE.match(value):
        raise ValueError("must be an order id like ORD-1001")
    return value


def _sku(value: str) -> str:
    value = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9][A-Z0-9._-]{0,63}", value):
        raise ValueError("must be a product SKU like HDP-NC100")
    return value


EmailAddress = Annotated[str, Field(max_length=254), AfterValidator(_email)]
OrderId = Annotated[
    str,
    Field(min_length=1, max_length=40, description="The order id, for example ORD-1001."),
    AfterValidator(_order_id),
]
CustomerEmail = Annotated[
    EmailAddress | None,
    Field(
        description="The email address the customer gave; it must own the order."
        " Leave it out when the customer's email is already verified."
    ),
]
NEED_EMAIL = "I need the email address that owns the order; please ask the customer for it"
Reason = Annotated[
    str,
    Field(max_length=500, description="Why, in the customer's own words (optional)."),
]


class FindCustomerOrdersArgs(ToolArgs):
    customer_email: CustomerEmail = None


class GetOrderArgs(ToolArgs):
    order_id: OrderId
    customer_email: CustomerEmail = None


class OrderItem(ToolArgs):
    sku: Annotated[
        str,
        Field(min_length=1, max_length=64, description="Product SKU from the catalog, e.g. HDP-NC100."),
        AfterValidator(_sku),
    ]
    quantity: int = Field(ge=1, le=MAX_QUANTITY, description=f"How many, 1 to {MAX_QUANTITY}.")


class CreateOrderArgs(ToolArgs):
    customer_email: EmailAddress | None = Field(
        None,
        description="The customer's email address; confirmations go there. Leave it out when the"
        " customer's email is already verified.",
    )
    customer_name: str = Field(min_length=1, max_length=200, description="The customer's full name.")
    items: list[OrderItem] = Field(
        min_length=1, max_length=20, description="The products to order: one entry per SKU with its quantity."
    )
    shipping_address: str = Field(
        min_length=5, max_length=500, description="Full postal address: street, city, postcode, country."
    )


class UpdateShippingAddressArgs(ToolArgs):
    order_id: OrderId
    customer_email: CustomerEmail = None
    shipping_address: str = Field(
        min_length=5,
        max_length=500,
        description="The new full postal address: street, city, postcode, country.",
    )


class CancelOrderArgs(ToolArgs):
    order_id: OrderId
    customer_email: CustomerEmail = None
    reason: Reason = ""


class RequestReturnArgs(ToolArgs):
    order_id: OrderId
    customer_email: CustomerEmail = None
    reason: Reason = ""


def owner_email(ctx: ToolContext, given: str | None, order_id: str) -> str:
    """The email a call on `order_id` acts for: the verified one, whatever the model sent.

    Under a verified email another customer's order reads exactly as an absent one.
    """
    verified = ctx.verified_email
    if verified is None:
        if given is None:
            raise ToolError(NEED_EMAIL)
        return given
    if given is not None and given != verified:
        raise not_found(order_id)
    return verified


def buyer_email(ctx: ToolContext, given: str | None) -> str:
    """Who a new order is for: a verified customer orders only for themselves."""
    verified = ctx.verified_email
    if verified is None:
        if given is None:
            raise ToolError("I need the customer's email address for the order")
        return given
    if given is not None and given != verified:
        raise ToolError(f"orders can only be placed for your verified email address, {verified}")
    return verified


_ChangeArgs = CancelOrderArgs | RequestReturnArgs | UpdateShippingAddressArgs


def _items(items: Any) -> str:
    if not isinstance(items, list):
        return "items"
    return ", ".join(f"{i.get('quantity', 1)} × {i.get('sku', '?')}" for i in items if isinstance(i, dict))


def order_tools(repo: OrderRepository, mailer: Mailer | None = None) -> list[Tool]:
    """The order tools bound to one repository; the tenant always comes from the call's context.

    With a mailer, an approved return mails the customer the return instructions and a prepaid label.
    """
    # Long by design: a table of six declarations, each tool's facts side by side with its handler.

    async def find_customer_orders(args: FindCustomerOrdersArgs, ctx: ToolContext) -> dict[str, Any]:
        email = args.customer_email
        if ctx.verified_email is not None and email not in (None, ctx.verified_email):
            return {"customer_email": email, "orders": [], "count": 0}  # as for an unknown email
        email = email or ctx.verified_email
        if email is None:
            raise ToolError(NEED_EMAIL)
        orders = await repo.find_customer_orders(ctx.tenant_id, email)
        return {"customer_email": email, "orders": orders, "count": len(orders)}

    async def get_order(args: GetOrderArgs, ctx: ToolContext) -> dict[str, Any]:
        email = owner_email(ctx, args.customer_email, args.order_id)
        return await repo.get_order(ctx.tenant_id, args.order_id, email)

    async def create_order(args: CreateOrderArgs, ctx: ToolContext) -> dict[str, Any]:
        return await repo.create_order(
            ctx.tenant_id,
            buyer_email(ctx, args.customer_email),
            args.customer_name,
            [(item.sku, item.quantity) for item in args.items],
            args.shipping_address,
        )

    async def can_create_order(args: CreateOrderArgs, ctx: ToolContext) -> None:
        buyer_email(ctx, args.customer_email)
        await repo.check_items(ctx.tenant_id, [(item.sku, item.quantity) for item in args.items])

    async def update_shipping_address(args: UpdateShippingAddressArgs, ctx: ToolContext) -> dict[str, Any]:
        email = owner_email(ctx, args.customer_email, args.order_id)
        return await repo.update_shipping_address(ctx.tenant_id, args.order_id, email, args.shipping_address)

    async def cancel_order(args: CancelOrderArgs, ctx: ToolContext) -> dict[str, Any]:
        email = owner_email(ctx, args.customer_email, args.order_id)
        return await repo.cancel_order(ctx.tenant_id, args.order_id, email, args.reason)

    async def request_return(args: RequestReturnArgs, ctx: ToolContext) -> dict[str, Any]:
        email = owner_email(ctx, args.customer_email, args.order_id)
        order = await repo.request_return(ctx.tenant_id, args.order_id, email, args.reason)
        if mailer is None:
            return order
        return {**order, "return_label": await mail_return_label(order, ctx)}

    async def mail_return_label(order: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        """The mail the returns policy promises; the return itself is already recorded."""
        assert mailer is not None
        content = render_return_instructions(
            ctx.tenant_id, order, mailer.settings.sender_name, await mailer.shop(ctx.tenant_id)
        )
        code = return_code(ctx.tenant_id, order["order_id"])
        try:
            mail = await mailer.enqueue(ctx.tenant_id, order["customer_email"], content)
        except Exception:  # the return stands; the model must not tell the customer it failed
            log.exception("return of %s recorded, but its label mail could not be queued", order["order_id"])
            return {
                "return_code": code,
                "status": "not sent",
                "note": "the return is recorded, but the label mail could not be queued; support sends it",
            }
        return {"return_code": code, **mail.outcome()}

    def can_change(change: str) -> Precheck:
        async def precheck(
            args: CancelOrderArgs | RequestReturnArgs | UpdateShippingAddressArgs, ctx: ToolContext
        ) -> None:
            email = owner_email(ctx, args.customer_email, args.order_id)
            await repo.check_change(ctx.tenant_id, args.order_id, email, change)

        return precheck

    refusals = (OrderError,)
    return [
        Tool(
            "find_customer_orders",
            "List a customer's orders (id, status, total, date), newest first. Needs the customer's email.",
            FindCustomerOrdersArgs,
            find_customer_orders,
            refusals=refusals,
        ),
        Tool(
            "get_order",
            "Look up one order: status, items, total and shipping address. Needs the order id and the"
            " email that owns the order.",
            GetOrderArgs,
            get_order,
            refusals=refusals,
        ),
        Tool(
            "create_order",
            "Place a new order for products from the catalog. Stock is reserved at once; the order starts"
            " as pending. Use only when the customer clearly asked to buy these items.",
            CreateOrderArgs,
            create_order,
            consequential=True,
            summary=lambda a: (
                f"Place an order for {a.get('customer_name')}"
                f" ({a.get('customer_email') or 'your verified email'}): "
                f"{_items(a.get('items'))}, shipped to {a.get('shipping_address')}"
            ),
            precheck=can_create_order,
            refusals=refusals,
        ),
        Tool(
            "update_shipping_address",
            "Change where an order will be shipped. Only possible while the order is pending or processing.",
            UpdateShippingAddressArgs,
            update_shipping_address,
            consequential=True,
            summary=lambda a: (
                f"Change the shipping address of order {a.get('order_id')} to {a.get('shipping_address')}"
            ),
            precheck=can_change("update_shipping_address"),
            refusals=refusals,
        ),
        Tool(
            "cancel_order",
            "Cancel an order and return its items to stock. Only possible while the order is pending or"
            " processing; shipped orders must be returned after delivery instead.",
            CancelOrderArgs,
            cancel_order,
            consequential=True,
            summary=lambda a: f"Cancel order {a.get('order_id')} (reason: {a.get('reason')})",
            precheck=can_change("cancel_order"),
            refusals=refusals,
        ),
        Tool(
            "request_return",
            "Request a return for a delivered order. Only possible once the order has been delivered. The"
            " customer is then emailed the return instructions with a prepaid return label (PDF).",
            RequestReturnArgs,
            request_return,
            consequential=True,
            summary=lambda a: f"Request a return of order {a.get('order_id')} (reason: {a.get('reason')})",
            precheck=can_change("request_return"),
            refusals=refusals,
        ),
    ]
