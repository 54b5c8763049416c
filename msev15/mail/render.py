"""Rendering mails: text and HTML parts from the order (or the message), plus their PDF attachments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment

from msev15.mail import documents

# Autoescape: every customer-supplied value (names, addresses, bodies) is escaped in the HTML part.
_HTML = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_TEXT = Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

_CONFIRMATION_TEXT = _TEXT.from_string(
    """Hello {{ order.customer_name }},

Thank you for your order {{ order.order_id }}. Here is a summary.

Status: {{ order.status }}
{% for item in order["items"] %}
- {{ item.quantity }} x {{ item.name }} ({{ item.sku }}) at {{ item.unit_price }} = {{ item.line_total }}
{% endfor %}
Total: {{ order.total }}

Shipping to:
{{ order.shipping_address }}

The invoice is attached as a PDF ({{ invoice }}).
If anything looks wrong, just reply to this email.

{{ sender_name }}
"""
)

_CONFIRMATION_HTML = _HTML.from_string(
    """<!doctype html>
<html><body style="font-family: sans-serif; color: #222;">
<p>Hello {{ order.customer_name }},</p>
<p>Thank you for your order <strong>{{ order.order_id }}</strong>. Here is a summary.</p>
<p>Status: {{ order.status }}</p>
<table cellpadding="4" style="border-collapse: collapse;">
<tr><th align="left">Item</th><th align="left">SKU</th><th align="right">Qty</th>
<th align="right">Price</th><th align="right">Total</th></tr>
{% for item in order["items"] %}
<tr><td>{{ item.name }}</td><td>{{ item.sku }}</td><td align="right">{{ item.quantity }}</td>
<td align="right">{{ item.unit_price }}</td><td align="right">{{ item.line_total }}</td></tr>
{% endfor %}
<tr><td colspan="4" align="right"><strong>Total</strong></td>
<td align="right"><strong>{{ order.total }}</strong></td></tr>
</table>
<p>Shipping to:<br>{{ order.shipping_address | e | replace("\\n", "<br>"|safe) }}</p>
<p>The invoice is attached as a PDF ({{ invoice }}).</p>
<p>If anything looks wrong, just reply to this email.</p>
<p>{{ sender_name }}</p>
</body></html>
"""
)

_RETURN_TEXT = _TEXT.from_string(
    """Hello {{ order.customer_name }},

Your return of order {{ order.order_id }} is registered. Your return code is {{ code }}.

How to send it back:
1. Pack the items unused, with all accessories and manuals, in their original packaging.
2. Print the attached prepaid return label ({{ label }}) and stick it on the parcel.
3. Drop the parcel at any post office or parcel point; there is nothing to pay.

Items to return:
{% for item in order["items"] %}
- {{ item.quantity }} x {{ item.name }} ({{ item.sku }})
{% endfor %}

The parcel goes to:
{{ return_address }}

We refund {{ order.total }} to the original payment method within 5 business days after the
parcel reaches us and passes inspection.

{{ sender_name }}
"""
)

_RETURN_HTML = _HTML.from_string(
    """<!doctype html>
<html><body style="font-family: sans-serif; color: #222;">
<p>Hello {{ order.customer_name }},</p>
<p>Your return of order <strong>{{ order.order_id }}</strong> is registered.
Your return code is <strong>{{ code }}</strong>.</p>
<p>How to send it back:</p>
<ol>
<li>Pack the items unused, with all accessories and manuals, in their original packaging.</li>
<li>Print the attached prepaid return label ({{ label }}) and stick it on the parcel.</li>
<li>Drop the parcel at any post office or parcel point; there is nothing to pay.</li>
</ol>
<p>Items to return:</p>
<ul>
{% for item in order["items"] %}
<li>{{ item.quantity }} x {{ item.name }} ({{ item.sku }})</li>
{% endfor %}
</ul>
<p>The parcel goes to:<br>{{ return_address | e | replace("\\n", "<br>"|safe) }}</p>
<p>We refund {{ order.total }} to the original payment method within 5 business days after the
parcel reaches us and passes inspection.</p>
<p>{{ sender_name }}</p>
</body></html>
"""
)

_MESSAGE_HTML = _HTML.from_string(
    """<!doctype html>
<html><body style="font-family: sans-serif; color: #222;">
{% for paragraph in paragraphs %}
<p>{{ paragraph | e | replace("\\n", "<br>"|safe) }}</p>
{% endfor %}
<p>{{ sender_name }}</p>
</body></html>
"""
)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str  # "maintype/subtype"
    data: bytes


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class Shop:
    """Who sends: the tenant's shop name and where its returns go."""

    name: str
    return_address: str


def render_confirmation(order: dict[str, Any], sender_name: str, shop: Shop) -> Rendered:
    """An order confirmation as text and HTML, with the invoice as a PDF, from the repository's order."""
    invoice = Attachment(
        f"invoice-{order['order_id']}.pdf", "application/pdf", documents.invoice_pdf(order, shop.name)
    )
    values = {"order": order, "sender_name": sender_name, "invoice": invoice.filename}
    return Rendered(
        f"Your order {order['order_id']}",
        _CONFIRMATION_TEXT.render(values),
        _CONFIRMATION_HTML.render(values),
        (invoice,),
    )


def render_return_instructions(
    tenant_id: str, order: dict[str, Any], sender_name: str, shop: Shop
) -> Rendered:
    """The return instructions for an order whose return is recorded, with a prepaid label as a PDF."""
    code = documents.return_code(tenant_id, order["order_id"])
    label = Attachment(
        f"return-label-{order['order_id']}.pdf",
        "application/pdf",
        documents.return_label_pdf(order, code, shop.name, shop.return_address),
    )
    values = {
        "order": order,
        "sender_name": sender_name,
        "code": code,
        "label": label.filename,
        "return_address": f"{shop.name}\n{shop.return_address}",
    }
    return Rendered(
        f"Return of order {order['order_id']}: your prepaid label",
        _RETURN_TEXT.render(values),
        _RETURN_HTML.render(values),
        (label,),
    )


def render_message(subject: str, body: str, sender_name: str) -> Rendered:
    """A free-form message: the body as written in text, escaped paragraphs in HTML."""
    paragraphs = [p.strip() for p in body.replace("\r\n", "\n").split("\n\n") if p.strip()]
    text = body.rstrip() + f"\n\n{sender_name}\n"
    return Rendered(subject, text, _MESSAGE_HTML.render(paragraphs=paragraphs, sender_name=sender_name))
