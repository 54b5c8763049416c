"""The email tools of API.md: an order confirmation, and a message only to the shop's own people."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from msev15.mail.render import render_confirmation, render_message
from msev15.mail.sender import Mailer, recipient_allowed
from msev15.stores.order_rules import OrderError
from msev15.stores.orders import OrderRepository
from msev15.tools.orders import CustomerEmail, EmailAddress, OrderId, owner_email
from msev15.tools.registry import Tool, ToolArgs, ToolContext, ToolError


class SendOrderConfirmationArgs(ToolArgs):
    order_id: OrderId
    customer_email: CustomerEmail = None


class SendEmailArgs(ToolArgs):
    to: EmailAddress = Field(description="Recipient: a customer of this shop (or an allowed staff address).")
    subject: str = Field(min_length=1, max_length=200, description="Subject line, one line of plain text.")
    body: str = Field(min_length=1, max_length=10_000, description="The message in plain text.")

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n"):
            raise ValueError("the subject must be a single line")
        return value


def mail_tools(mailer: Mailer, repo: OrderRepository) -> list[Tool]:
    """The email tools; recipients are checked against this tenant's customers and the allow-list."""

    async def send_order_confirmation(args: SendOrderConfirmationArgs, ctx: ToolContext) -> dict[str, Any]:
        email = owner_email(ctx, args.customer_email, args.order_id)
        order = await repo.get_order(ctx.tenant_id, args.order_id, email)
        content = render_confirmation(order, mailer.settings.sender_name, await mailer.shop(ctx.tenant_id))
        mail = await mailer.enqueue(ctx.tenant_id, order["customer_email"], content)
        return {"order_id": order["order_id"], **mail.outcome()}

    async def may_send_to(args: SendEmailArgs, ctx: ToolContext) -> None:
        if ctx.verified_email is not None:  # a verified customer's chat mails that customer only
            if args.to != ctx.verified_email:
                raise ToolError(f"I can only send email to your own verified address, {ctx.verified_email}")
            return
        patterns = mailer.settings.allowed_recipient_patterns
        if not (recipient_allowed(args.to, patterns) or await repo.is_customer(ctx.tenant_id, args.to)):
            raise ToolError(
                f"I can only send email to customers of this shop or to approved addresses, and {args.to}"
                " is neither"
            )

    async def send_email(args: SendEmailArgs, ctx: ToolContext) -> dict[str, Any]:
        await may_send_to(args, ctx)
        content = render_message(args.subject, args.body, mailer.settings.sender_name)
        return (await mailer.enqueue(ctx.tenant_id, args.to, content)).outcome()

    return [
        Tool(
            "send_order_confirmation",
            "Email the customer a confirmation of one of their orders (items, total, shipping address),"
            " with the invoice attached as a PDF. Needs the order id and the email that owns the order;"
            " the mail goes to that email.",
            SendOrderConfirmationArgs,
            send_order_confirmation,
            refusals=(OrderError,),
        ),
        Tool(
            "send_email",
            "Send a plain-text email to a customer of this shop. Only for messages the customer asked for;"
            " other recipients are refused.",
            SendEmailArgs,
            send_email,
            consequential=True,
            summary=lambda a: f'Send an email to {a.get("to")} with the subject "{a.get("subject")}"',
            precheck=may_send_to,
            refusals=(OrderError,),
        ),
    ]
