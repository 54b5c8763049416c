"""PDF documents mailed to customers: the invoice of an order and the prepaid return label.

Rendered with fpdf2 from the order alone, deterministically: the same order gives the same bytes
(the PDF's dates come from the order, never from the clock), so a document can be checked,
re-rendered and compared. fpdf2's built-in fonts cover Latin-1; other characters are written
as their closest plain letter, or `?`.

fpdf2 is imported on the first document, not with the module: it is a fifth of a worker's memory
at start, and most workers never render a PDF.
"""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fpdf import FPDF

_FONT = "helvetica"
_LEFT, _DOWN = "LMARGIN", "NEXT"  # after a cell: the next line, at the left margin (fpdf2 coerces)
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: read aloud on the phone
# Letters and marks outside Latin-1 that have no decomposition to a plain letter.
_PLAIN = str.maketrans(
    {"ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i", "œ": "oe", "Œ": "OE", "—": "-", "–": "-",
     "‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "…": "...", "€": "EUR", "•": "-"}
)  # fmt: skip


def return_code(tenant_id: str, order_id: str) -> str:
    """The return's code: derived from the tenant and the order (an order is returned at most once)."""
    digest = hashlib.sha256(f"{tenant_id}\x00{order_id}".encode()).digest()
    letters = "".join(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in digest[:8])
    return f"RET-{letters[:4]}-{letters[4:]}"


def invoice_pdf(order: dict[str, Any], shop_name: str) -> bytes:
    """The invoice of one order: shop, order id, date, customer, address, lines and total."""
    pdf = _document(f"Invoice {order['order_id']}", shop_name, _stamp(order["created_at"]))
    pdf.set_font(_FONT, "B", 20)
    pdf.cell(0, 10, _text(shop_name), new_x=_LEFT, new_y=_DOWN)
    pdf.set_font(_FONT, "", 16)
    pdf.cell(0, 9, "Invoice", new_x=_LEFT, new_y=_DOWN)
    pdf.ln(2)
    pdf.set_font(_FONT, "", 11)
    for label, value in (
        ("Order", order["order_id"]),
        ("Date", _day(order["created_at"])),
        ("Customer", f"{order['customer_name']} <{order['customer_email']}>"),
        ("Status", order["status"]),
    ):
        _field(pdf, label, value)
    pdf.ln(3)
    pdf.set_font(_FONT, "B", 11)
    pdf.cell(0, 6, "Ship to", new_x=_LEFT, new_y=_DOWN)
    pdf.set_font(_FONT, "", 11)
    pdf.multi_cell(0, 5.5, _text(order["shipping_address"]), new_x=_LEFT, new_y=_DOWN)
    pdf.ln(5)

    widths = (78, 36, 16, 30, 30)
    pdf.set_font(_FONT, "B", 10)
    pdf.set_fill_color(235, 238, 243)
    for width, title, align in zip(widths, ("Item", "SKU", "Qty", "Price", "Total"), "LLRRR", strict=True):
        pdf.cell(width, 7, title, border="B", align=align, fill=True)
    pdf.ln(7)
    pdf.set_font(_FONT, "", 10)
    for item in order["items"]:
        cells = (item["name"], item["sku"], str(item["quantity"]), item["unit_price"], item["line_total"])
        for width, value, align in zip(widths, cells, "LLRRR", strict=True):
            pdf.cell(width, 7, _fit(pdf, _text(value), width), align=align)
        pdf.ln(7)
    pdf.set_font(_FONT, "B", 11)
    pdf.cell(sum(widths[:4]), 9, "Total", border="T", align="R")
    pdf.cell(widths[4], 9, order["total"], border="T", align="R", new_x=_LEFT, new_y=_DOWN)
    pdf.ln(8)
    pdf.set_font(_FONT, "", 9)
    pdf.multi_cell(
        0, 5, "Thank you for shopping with us. Keep this invoice for your warranty.", new_x=_LEFT, new_y=_DOWN
    )
    return bytes(pdf.output())


def return_label_pdf(order: dict[str, Any], code: str, shop_name: str, return_address: str) -> bytes:
    """A prepaid return label: from the customer to the shop, with the order id and the return code."""
    pdf = _document(f"Return label {order['order_id']}", shop_name, _stamp(order["updated_at"]))
    pdf.set_line_width(0.6)
    pdf.rect(10, 10, 190, 125)
    pdf.set_xy(15, 15)
    pdf.set_font(_FONT, "B", 18)
    pdf.cell(0, 10, "PREPAID RETURN LABEL", new_x=_LEFT, new_y=_DOWN)
    pdf.set_x(15)
    pdf.set_font(_FONT, "", 10)
    pdf.cell(0, 5, "Postage paid by the shop. No stamp needed.", new_x=_LEFT, new_y=_DOWN)
    pdf.ln(4)

    top = pdf.get_y()
    _address_block(pdf, 15, top, "From", order["customer_name"], order["shipping_address"])
    _address_block(pdf, 110, top, "To", shop_name, return_address)
    pdf.set_xy(15, max(pdf.get_y(), top + 40) + 4)
    pdf.set_font(_FONT, "", 11)
    for label, value in (
        ("Order", order["order_id"]),
        ("Return code", code),
        ("Requested", _day(order["updated_at"])),
    ):
        pdf.set_x(15)
        _field(pdf, label, value)
    pdf.ln(4)
    _bars(pdf, 15, pdf.get_y(), code)
    pdf.set_xy(15, pdf.get_y() + 22)
    pdf.set_font("courier", "B", 14)
    pdf.cell(0, 7, f"*{code}*", new_x=_LEFT, new_y=_DOWN)
    return bytes(pdf.output())


# Drawing helpers ----------------------------------------------------------------------------


def _document(title: str, shop_name: str, stamp: datetime) -> FPDF:
    from fpdf import FPDF  # noqa: PLC0415 - lazily, see the module's docstring

    pdf = FPDF(format="A4")
    pdf.set_creation_date(stamp)
    pdf.set_title(_text(title))
    pdf.set_author(_text(shop_name))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_margins(15, 15, 15)
    pdf.add_page()
    return pdf


def _field(pdf: FPDF, label: str, value: str) -> None:
    pdf.set_font(_FONT, "B", 11)
    pdf.cell(32, 6, f"{label}:")
    pdf.set_font(_FONT, "", 11)
    pdf.cell(0, 6, _text(value), new_x=_LEFT, new_y=_DOWN)


def _address_block(pdf: FPDF, x: float, y: float, title: str, name: str, address: str) -> None:
    pdf.set_xy(x, y)
    pdf.set_font(_FONT, "B", 10)
    pdf.cell(85, 6, title.upper(), new_x=_LEFT, new_y=_DOWN)
    pdf.set_font(_FONT, "", 12)
    for line in [name, *_lines(address)]:
        pdf.set_x(x)
        pdf.multi_cell(85, 6, _text(line), new_x=_LEFT, new_y=_DOWN)


def _bars(pdf: FPDF, x: float, y: float, code: str) -> None:
    """A barcode-like strip: guard bars, then each character's bits as narrow and wide bars."""
    pdf.set_fill_color(0, 0, 0)
    widths = [0.5, 0.5]
    for byte in code.encode("ascii"):
        widths += [1.0 if byte >> bit & 1 else 0.5 for bit in range(7, -1, -1)]
    widths += [0.5, 0.5]
    for width in widths:
        pdf.rect(x, y, width, 20, style="F")
        x += width + 0.6


def _fit(pdf: FPDF, text: str, width: float) -> str:
    """Cut a table cell's text to its column (with an ellipsis) instead of overflowing."""
    if pdf.get_string_width(text) <= width - 2:
        return text
    while text and pdf.get_string_width(text + "...") > width - 2:
        text = text[:-1]
    return text.rstrip() + "..."


def _lines(text: str) -> list[str]:
    """Address lines: as written, or split at commas when written on one line."""
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if len(lines) == 1 and "," in lines[0]:
        lines = [part.strip() for part in lines[0].split(",") if part.strip()]
    return lines


def _text(value: str) -> str:
    """What the built-in fonts can draw (Latin-1): accents kept, others to their base letter or `?`."""
    out = []
    for char in unicodedata.normalize("NFC", str(value)).translate(_PLAIN):
        if char in "\r\t":
            char = " "
        try:
            char.encode("latin-1")
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            char = base or "?"
        out.append(char)
    return "".join(out)


def _stamp(iso: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return datetime(2000, 1, 1, tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _day(iso: str) -> str:
    return _stamp(iso).date().isoformat()
