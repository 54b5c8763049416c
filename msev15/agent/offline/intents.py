"""What the offline model understands: a small intent table and the slots it reads from the conversation."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

_I = re.IGNORECASE

ORDER_ID = re.compile(r"\bORD[-\s#]?(\d{3,})\b", _I)
# "order 1002", "order number 1002", "order #1002": the demo shop's ids are ORD-<number>.
ORDER_NUMBER = re.compile(r"\border\s*(?:number|no\.?|nr\.?)?\s*#?\s*(\d{4,})\b", _I)
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
SKU_NAMED = re.compile(r"\bsku\s*[:#]?\s*([A-Za-z0-9][A-Za-z0-9-]{1,40})", _I)
# Catalog codes look like HDP-NC100: letters, a dash, then letters and digits (never an order id).
SKU_CODE = re.compile(r"\b(?!ORD-)([A-Za-z]{2,6}-(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{2,12})\b", _I)

DEFAULT_REASON = "requested by the customer"
_KNOWN_REASONS = re.compile(
    r"ordered (?:it |this |them |the wrong [a-z]+ )?by mistake|changed my mind"
    r"|no longer need(?:ed)? (?:it|them)|(?:do not|don'?t) need (?:it|them)(?: anymore)?"
    r"|found (?:it|them|a better price) (?:cheaper )?elsewhere|wrong (?:size|colou?r|item|product|model)"
    r"|(?:arrived |it'?s |it is |is )?(?:damaged|broken|defective|faulty)"
    r"|(?:does ?n[o']t|doesn'?t) (?:fit|work)|too (?:small|big|large|late)|arrived late|not as described",
    _I,
)
_REASON_AFTER = re.compile(r"\b(?:because|since|due to|reason(?:\s+is)?\s*[:-]?)\s+(?P<reason>[^.!?\n]+)", _I)
# Where a free-text value (reason, address) stops: the customer moved on to their email or order id.
_CLAUSE_END = re.compile(
    r"[,;.]?\s*(?:and\s+)?(?:(?:my\s+)?e-?mail\b|i'?m\s+\S+@|i am\s+\S+@|\S+@\S+"
    r"|(?:for|of|on)\s+(?:my\s+)?(?:order\s+)?ORD[-\s#]?\d|thanks?\b|thank you\b)",
    _I,
)
_ADDRESS = re.compile(
    r"(?:address(?:\s+(?:of|for|on)\s+(?:my\s+)?(?:order\s+)?(?:ORD[-\s#]?\d+|it|them))?"
    r"\s*(?:to|is(?: now)?|should be|:|=)"
    r"|(?:ship|send|deliver)\s+(?:it|them|the order|my order|(?:order\s+)?ORD[-\s#]?\d+)\s+to"
    r"|moved to)\s+(?P<address>.+)",
    _I | re.S,
)
_PRODUCT_LEAD = re.compile(
    r"^.*?\b(?:do you (?:sell|have|carry|stock|offer)|are there|is there|(?:i'?m |i am )?looking for"
    r"|search(?: for)?|find(?: me)?|how much (?:is|are|does|do|for)|price (?:of|for)|recommend"
    r"|(?:i )?(?:need|want)(?: to buy)?|buy|tell me about|is (?:the|your|a|an)|are (?:the|your))\s+",
    _I,
)
_PRODUCT_TAIL = re.compile(r"\s*(?:in stock|available|cost|costs|please|for sale|at all)?\s*[?.!]*\s*$", _I)
_LEADING_ARTICLE = re.compile(r"^(?:any|some|a|an|the|your)\s+", _I)
_GREETING_LEAD = re.compile(r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening))\b[\s,!.]*", _I)

TOPICS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("returns", re.compile(r"return|refund|exchange", _I)),
    ("warranty", re.compile(r"warrant|guarantee|repair", _I)),
    ("privacy", re.compile(r"privacy|personal data|gdpr|data protection|cookie", _I)),
    ("shipping", re.compile(r"ship|deliver|postage|courier", _I)),
)


@dataclass(frozen=True, slots=True)
class Intent:
    """One kind of request: how it is recognised, which tool serves it and what that tool needs."""

    name: str
    pattern: re.Pattern[str]
    tool: str | None = None
    needs: tuple[str, ...] = ()


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, _I)


# First match wins, so the specific requests come before the general ones.
INTENTS: tuple[Intent, ...] = (
    Intent(
        "help",
        _p(r"^\W*help\b|\bhelp me\b\W*$|what (?:else )?can you do|what do you do\W*$|how does this work"),
    ),
    Intent(
        "policy",
        _p(
            r"\bpolic(?:y|ies)\b|\bwarrant(?:y|ies)\b|\bguarantee\b|\bprivacy\b|personal data|\bgdpr\b"
            r"|how long (?:does|will|do) (?:shipping|delivery|it take)"
            r"|shipping (?:costs?|times?|fees?|options?)|delivery (?:times?|costs?|fees?)"
            r"|return (?:window|period)"
            # "Can I return shoes?" asks about the policy; "Can I return ORD-1003 / it?" is a request.
            r"|\b(?:can|could|how|do|does|what)\b[^.?!]*\breturns?\b"
            r"(?![^.?!]*(?:ORD|\bmy order\b|\bit\b|\bthem\b))"
        ),
        "get_policy",
        ("topic",),
    ),
    Intent(
        "product_sku",
        re.compile(SKU_NAMED.pattern + "|" + SKU_CODE.pattern, _I),
        "get_product",
        ("sku",),
    ),
    Intent(
        "cancel",
        _p(r"(?<!noise )(?<!noise-)\bcancel(?:l?ed|l?ing|lation)?\b"),
        "cancel_order",
        ("order_id", "email"),
    ),
    Intent(
        "address",
        _p(
            r"\b(?:change|update|modify|correct|fix|edit|new|wrong)\b[^.?!]*\baddress\b"
            r"|\baddress\b[^.?!]*\b(?:change|update|wrong)|\bmoved to\b"
            r"|\b(?:ship|send|deliver) (?:it|them|the order|my order|(?:order )?ORD[-\s#]?\d+) to\b"
        ),
        "update_shipping_address",
        ("order_id", "email", "address"),
    ),
    Intent(
        "return",
        _p(r"\breturn(?:ing)?\b|\bsend (?:it|them) back\b|\brefund\b"),
        "request_return",
        ("order_id", "email"),
    ),
    Intent(
        "confirmation",
        _p(
            r"\bconfirmation\b|\breceipt\b|\b(?:e-?mail|send) me\b[^.?!]*\b(?:order|details|summary)\b"
            r"|\bresend\b[^.?!]*\b(?:e-?mail|order)\b"
        ),
        "send_order_confirmation",
        ("order_id", "email"),
    ),
    Intent(
        "list_orders",
        _p(
            r"\b(?:my|all|list|show|which|what)\b[^.?!]*\borders\b|\border history\b"
            r"|\bwhat (?:did|have) i (?:order|buy|bought)"
        ),
        "find_customer_orders",
        ("email",),
    ),
    Intent(
        "order_status",
        _p(
            r"\bORD[-\s#]?\d{3,}|\border\s*(?:number|no\.?|#)\s*#?\d|\bwhere(?:'s| is) my\b|\btrack"
            r"|\border\b[^.?!]*\b(?:status|where|arrive|arriving|come|coming)\b"
            r"|\b(?:status|where|when)\b[^.?!]*\b(?:order|package|parcel|delivery)\b"
        ),
        "get_order",
        ("order_id", "email"),
    ),
    Intent(
        "product_search",
        _p(
            r"\bdo you (?:sell|have|carry|stock|offer)\b|\blooking for\b|\bsearch\b|\bhow much\b|\bprice\b"
            r"|\bin stock\b|\bproducts?\b|\bcatalog(?:ue)?\b|\brecommend\b|\btell me about\b"
        ),
        "search_products",
        ("query",),
    ),
    Intent(
        "faq",
        _p(
            r"\bpay(?:ment|ing|pal)?\b|\bgift ?cards?\b|\baccount\b|\bpassword\b|\bcontact\b|\bphone\b"
            r"|\binternational(?:ly)?\b|\bcustoms\b|\bdiscount|\bcoupon|\bpromo|\bopening hours\b|\binvoice\b"
        ),
        "search_faq",
        ("query",),
    ),
    Intent("thanks", _p(r"^\W*(?:thanks?|thank you|thx|cheers|great|perfect|ok(?:ay)?|bye|goodbye)\b")),
    Intent(
        "greeting", _p(r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening)|greetings)\b|how are you")
    ),
)

# Only when nothing specific matched and no earlier request is waiting for an answer.
QUESTION = Intent(
    "question",
    _p(r"\?\s*$|^\W*(?:how|what|when|why|where|which|who|can|could|do|does|is|are|will|should)\b"),
    "search_faq",
    ("query",),
)
UNKNOWN = Intent("unknown", _p(r"(?!)"))


@dataclass(slots=True)
class Understanding:
    """The request behind the current message, the slots it can fill and the ones still missing."""

    intent: Intent
    slots: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def detect(text: str) -> Intent | None:
    """The first specific intent of the table the text matches."""
    for intent in INTENTS:
        if intent.pattern.search(text):
            return intent
    return None


def understand(user_texts: list[str]) -> Understanding:
    """Read the whole conversation: the newest message's request, or the earlier one it answers."""
    if not user_texts:
        return Understanding(UNKNOWN)
    current = len(user_texts) - 1
    text = user_texts[current]
    intent = detect(text)
    origin = current
    if intent is None:
        pending = _pending(user_texts)
        if pending is not None:
            intent, origin = pending
        elif QUESTION.pattern.search(text):
            intent = QUESTION
        else:
            return Understanding(UNKNOWN)
    slots = _fill(intent, user_texts, origin)
    missing = [name for name in intent.needs if not slots.get(name)]
    return Understanding(intent, slots, missing)


def _pending(user_texts: list[str]) -> tuple[Intent, int] | None:
    """The latest earlier request that was still missing something, which the new message may supply."""
    for index in range(len(user_texts) - 2, max(-1, len(user_texts) - 5), -1):
        intent = detect(user_texts[index])
        if intent is None:
            continue
        if intent.tool is None:
            return None
        slots = _fill(intent, user_texts[: index + 1], index)
        return (intent, index) if any(not slots.get(n) for n in intent.needs) else None
    return None


def _fill(intent: Intent, user_texts: list[str], origin: int) -> dict[str, str]:
    """Slots for the intent: ids and email from any message, free text from the request or its answer."""
    current = user_texts[-1]
    slots: dict[str, str] = {}
    order_id = _latest(user_texts, order_id_in)
    email = _latest(user_texts, email_in)
    if order_id:
        slots["order_id"] = order_id
    if email:
        slots["email"] = email
    request = user_texts[origin]
    later = user_texts[origin + 1 :]
    if intent.name in ("cancel", "return"):
        slots["reason"] = reason_in(current) or reason_in(request) or DEFAULT_REASON
    elif intent.name == "address":
        address = address_in(request) or next((a for a in map(answered_address, reversed(later)) if a), None)
        if address:
            slots["address"] = address
    elif intent.name == "policy":
        topic = topic_in(request)
        if topic is None and later:
            topic = topic_in(current)
        if topic:
            slots["topic"] = topic
    elif intent.name == "product_sku":
        sku = sku_in(request)
        if sku:
            slots["sku"] = sku
    elif intent.name == "product_search":
        slots["query"] = product_query(request)
    elif intent.name in ("faq", "question"):
        slots["query"] = question_query(request)
    return {k: v for k, v in slots.items() if v}


def _latest(texts: list[str], find: Callable[[str], str | None]) -> str | None:
    for text in reversed(texts):
        value = find(text)
        if value:
            return value
    return None


def order_id_in(text: str) -> str | None:
    """The first order id mentioned, normalised to ORD-<number>."""
    match = ORDER_ID.search(text) or ORDER_NUMBER.search(text)
    return f"ORD-{match.group(1)}" if match else None


def email_in(text: str) -> str | None:
    match = EMAIL.search(text)
    return match.group(0).lower() if match else None


def sku_in(text: str) -> str | None:
    match = SKU_NAMED.search(text) or SKU_CODE.search(text)
    return match.group(1).upper() if match else None


def topic_in(text: str) -> str | None:
    for topic, pattern in TOPICS:
        if pattern.search(text):
            return topic
    return None


def reason_in(text: str) -> str | None:
    """The customer's own reason ("because ...", or a well-known one), cut before their email or id."""
    match = _REASON_AFTER.search(text)
    if match:
        reason = _until_clause_end(match.group("reason"))
        if len(reason) >= 3:
            return reason[:200]
    known = _KNOWN_REASONS.search(text)
    return known.group(0).strip().lower() if known else None


def address_in(text: str) -> str | None:
    """The new address in "change the address of ORD-1001 to 5 Main St, Springfield"."""
    match = _ADDRESS.search(text)
    if not match:
        return None
    return _clean_address(match.group("address"))


def answered_address(text: str) -> str | None:
    """A message that is just the address, given after the assistant asked for it."""
    if detect(text) is not None and address_in(text) is None:
        return None
    return address_in(text) or _clean_address(ORDER_ID.sub("", text))


def _clean_address(raw: str) -> str | None:
    # Cut before removing emails: "..., I'm alice@example.com" ends the address at "I'm".
    address = EMAIL.sub("", _until_clause_end(raw)).strip(" \t\n,;:.!\"'")
    address = re.sub(r"\s+", " ", address)
    # A street address has a house number or a postcode; this also rejects "is wrong".
    if len(address) < 6 or not re.search(r"[A-Za-z]", address) or not re.search(r"\d", address):
        return None
    return address[:300]


def _until_clause_end(text: str) -> str:
    match = _CLAUSE_END.search(text)
    return (text[: match.start()] if match else text).strip(" \t\n,;:.!?\"'")


def product_query(text: str) -> str:
    """ "Do you sell noise cancelling headphones?" → "noise cancelling headphones"."""
    query = _PRODUCT_LEAD.sub("", _GREETING_LEAD.sub("", text.strip()), count=1)
    query = _PRODUCT_TAIL.sub("", query)
    query = _LEADING_ARTICLE.sub("", query.strip()).strip(" ,;:.!?\"'")
    return query[:200] or question_query(text)


def question_query(text: str) -> str:
    query = _GREETING_LEAD.sub("", text.strip()).strip(" ,;:.!?\"'")
    return (query or text.strip())[:200]
