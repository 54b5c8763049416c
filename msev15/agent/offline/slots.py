"""Slots: the values the offline model reads out of the customer's own words.

Ids and emails are found anywhere; free text (a reason, an address, a name, a product) is cut
where the customer moved on to something else, so no stray punctuation or email rides along.
"""

from __future__ import annotations

import re

_I = re.IGNORECASE

ORDER_ID = re.compile(r"\bORD[-\s#]?(\d{3,})\b", _I)
# "order 1002", "order number 1002", "order #1002": the demo shop's ids are ORD-<number>.
ORDER_NUMBER = re.compile(r"\border\s*(?:number|no\.?|nr\.?)?\s*#?\s*(\d{4,})\b", _I)
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
SKU_NAMED = re.compile(r"\bsku\s*[:#]?\s*([A-Za-z0-9][A-Za-z0-9-]{1,40})", _I)
# Catalog codes look like HDP-NC100: letters, a dash, then letters and digits (never an order id).
SKU_CODE = re.compile(r"\b(?!ORD-)([A-Za-z]{2,6}-(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{2,12})\b", _I)

DEFAULT_REASON = "requested by the customer"
KNOWN_REASONS = re.compile(
    r"ordered (?:it |this |them |the wrong [a-z]+ )?by mistake|changed my mind"
    r"|no longer need(?:ed)? (?:it|them)|(?:do not|don'?t) need (?:it|them)(?: anymore)?"
    r"|found (?:it|them|a better price) (?:cheaper )?elsewhere|wrong (?:size|colou?r|item|product|model)"
    r"|(?:arrived |it'?s |it is |is )?(?:damaged|broken|defective|faulty)"
    r"|(?:does ?n[o']t|doesn'?t) (?:fit|work)|too (?:small|big|large|late|tight|loose|short|long)"
    r"|arrived late|not as described",
    _I,
)
_REASON_AFTER = re.compile(r"\b(?:because|since|due to|reason(?:\s+is)?\s*[:-]?)\s+(?P<reason>[^.!?\n]+)", _I)
# Where a free-text value stops: the customer moved on to their email, their name or a new sentence.
_CLAUSE_END = re.compile(
    r"\s+[-–—]+\s+(?=(?:e-?mail|my|i|i'm|name|thanks|please|and)\b)"
    r"|[,;.]?\s*(?:and\s+)?(?:(?:my\s+)?e-?mail\b|i'?m\b|i am\b|\S+@\S+"
    r"|(?:for|of|on)\s+(?:my\s+)?(?:order\s+)?ORD[-\s#]?\d|thanks?\b|thank you\b|(?:my\s+)?name\s+is\b"
    r"|name\s*:)"
    r"|\.\s+(?=(?:i|i'm|i'd|i've|my|please|thanks|thank|and|also|can|could|would|when|what|how)\b)",
    _I,
)
_ADDRESS = re.compile(
    r"(?:address(?:\s+(?:of|for|on)\s+(?:my\s+)?(?:order\s+)?(?:ORD[-\s#]?\d+|it|them))?"
    r"\s*(?:to|is(?: now)?|should be|:|=)"
    r"|(?:ship|send|deliver)\s+(?:it|them|the order|my order|(?:order\s+)?ORD[-\s#]?\d+)\s+to"
    r"|(?:ship(?:ped)?|sen[dt]|deliver(?:ed)?|mail(?:ed)?)\s+(?:it\s+|them\s+)?to(?!\s+me\b)"
    r"|moved to)\s+(?P<address>.+)",
    _I | re.S,
)
_ADDRESS_LEAD = re.compile(
    r"^(?:(?:sorry|oops|actually|no|oh|i mean|make (?:that|it)|it'?s|it is|correction|rather)[\s,:;.!-]+)+",
    _I,
)
_ADDRESS_TAIL = re.compile(r"[\s,]+(?:instead|please|thanks|thank you|asap|now|for me)$", _I)
_FILLER = re.compile(r"^(?:(?:oh|wait|actually|hmm+|sorry|oops|well|so|um+|uh+|ah)[\s,!]*)+$", _I)
_NAME = re.compile(
    r"\b(?i:my (?:full )?name is|name\s*[:=]|(?:it'?s )?for the name of|under the name(?: of)?)\s+"
    r"(?P<name>[A-Za-z][A-Za-z'.-]*(?:\s+[A-Za-z][A-Za-z'.-]*){0,3})"
    r"|\b(?i:i'?m|i am|this is)\s+(?P<capital>[A-Z][a-z'.-]+(?:\s+[A-Z][a-z'.-]+){0,3})\b"
)
_FOR_NAME = re.compile(r"\bfor\s+([A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+){1,2})\b")
_NAME_LEAD = re.compile(
    r"^(?:(?:it'?s|it is|that'?s|that is|oh|sure|ok|okay|yes|please)[,\s]+)*(?:(?:for|under|to)\s+)?", _I
)
_NAME_ONLY = re.compile(r"^[A-Za-z][A-Za-z'.-]*(?:\s+[A-Za-z][A-Za-z'.-]*){0,3}$")
_NOT_NAMES = re.compile(
    r"^(?:yes|no|ok|okay|sure|thanks?|thank you|hi|hello|hey|help|nothing|never ?mind|none|cancel|stop"
    r"|looking|interested|not sure|fine|great|good|bye)\b",
    _I,
)
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_NUMBER_WORDS |= {"seven": 7, "eight": 8, "nine": 9, "ten": 10, "a pair of": 2, "a couple of": 2}
_QUANTITY = re.compile(
    r"\b(?:buy|order|purchase|get|take|want|like|need)\s+(?:(?:to\s+(?:buy|order|get)\s+)?)"
    r"(?P<q>\d{1,3}|a pair of|a couple of|one|two|three|four|five|six|seven|eight|nine|ten|an?)\b"
    r"|\b(?P<x>\d{1,3})\s*[x×]\s|\b[x×]\s*(?P<y>\d{1,3})\b|\bquantity\s*[:=]?\s*(?P<z>\d{1,3})\b",
    _I,
)
_GREETING_LEAD = re.compile(r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening))\b[\s,!.]*", _I)
_PRODUCT_LEAD = re.compile(
    r"^.*?\b(?:do you (?:sell|have|carry|stock|offer)|are there|is there|(?:i'?m |i am )?looking for"
    r"|search(?: for)?|find(?: me)?|how much (?:is|are|does|do|for)|price (?:of|for)|recommend"
    r"|(?:i )?(?:need|want)(?: to buy)?|buy|tell me about|is (?:the|your|a|an)|are (?:the|your)"
    r"|what(?:'s| is| are)(?: the| your)?|show me(?: your| some| the| any)?)\s+",
    _I,
)
_PRODUCT_TAIL = re.compile(
    r"\s*(?:(?:that |which )?(?:you (?:have|sell|carry|offer|stock|got)|do you have)|in stock|available|cost"
    r"|costs|please|for sale|at all|stuff|things|items|products)?\s*[?.!]*\s*$",
    _I,
)
_LEADING_ARTICLE = re.compile(r"^(?:any|some|a|an|the|your)\s+", _I)
_BUY_LEAD = re.compile(
    r"^.*?\b(?:buy|purchase|order|get|take|like|want|need)\s+(?:to\s+(?:buy|order|get|purchase)\s+)?"
    r"(?:\d{1,3}|a pair of|a couple of|one|two|three|four|five|six|seven|eight|nine|ten|an?|some|the)?\s*",
    _I,
)
_BUY_TAIL = re.compile(
    r"\s*(?:[,;.!?(]|\b(?:shipped|ship|sent|send|deliver(?:ed)?|to be|please|and|with|from|at)\b"
    r"|\bfor\s+(?=(?-i:[A-Z])|(?:me|my|him|her|us)\b)).*$",
    _I | re.S,
)
_REFERENCE = re.compile(r"^(?:one|ones|it|them|that|this|that one|this one|those|these)?$", _I)
_SORT_WORDS = re.compile(r"\b(?:cheapest|least expensive|lowest price|most affordable)\b", _I)
_DEAR_WORDS = re.compile(r"\b(?:most expensive|priciest|highest price)\b", _I)
_MAX_PRICE = re.compile(
    r"\b(?:under|below|less than|cheaper than|up to|at most)\s*\$?\s*(\d+(?:\.\d{1,2})?)", _I
)
TOPICS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("returns", re.compile(r"return|refund|exchange", _I)),
    ("warranty", re.compile(r"warrant|guarantee|repair", _I)),
    ("privacy", re.compile(r"privacy|personal data|gdpr|data protection|cookie", _I)),
    ("shipping", re.compile(r"ship|deliver|postage|courier", _I)),
)


def order_ids_in(text: str) -> list[str]:
    """Every order id mentioned, in order, normalised to ORD-<number>."""
    found = [f"ORD-{m.group(1)}" for m in ORDER_ID.finditer(text)]
    found += [f"ORD-{m.group(1)}" for m in ORDER_NUMBER.finditer(text)]
    return list(dict.fromkeys(found))


def order_id_in(text: str) -> str | None:
    found = order_ids_in(text)
    return found[0] if found else None


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


def reason_in(text: str, request: re.Pattern[str] | None = None) -> str | None:
    """The customer's own reason: "because ...", a sentence of its own, or a well-known phrase."""
    match = _REASON_AFTER.search(text)
    if match:
        reason = until_clause_end(match.group("reason"))
        if len(reason) >= 3:
            return reason[:200]
    pieces = [p for p in (_reason_piece(x, request) for x in re.split(r"[.!?;\n]+|,\s+", text)) if p]
    own = next((p for p in pieces if KNOWN_REASONS.search(p)), None) or next(iter(pieces), None)
    if own:
        return own
    known = KNOWN_REASONS.search(text)
    return known.group(0).strip().lower() if known else None


def _reason_piece(piece: str, request: re.Pattern[str] | None) -> str | None:
    """A clause that says why: not the request itself, not an id, email, greeting or question."""
    if EMAIL.search(piece) or ORDER_ID.search(piece) or ORDER_NUMBER.search(piece) or "?" in piece:
        return None
    if request is not None and request.search(piece):
        return None
    piece = _GREETING_LEAD.sub("", piece).strip(" \t\"'-")
    if (
        _FILLER.match(piece)
        or _NOT_NAMES.match(piece)
        or re.match(r"^(?:please|i'?m|i am|my e-?mail|e-?mail)\b", piece, _I)
    ):
        return None
    if len(piece.split()) >= 2 or KNOWN_REASONS.search(piece):
        return piece[:200]
    return None


def address_in(text: str) -> str | None:
    """The address in "change the address of ORD-1001 to 5 Main St" or "ship to 1 Main St, Springfield"."""
    match = _ADDRESS.search(text)
    if not match:
        return None
    return _clean_address(match.group("address"))


def answered_address(text: str) -> str | None:
    """A message that is just the address, given after the assistant asked for it."""
    return address_in(text) or _clean_address(ORDER_ID.sub("", text))


def _clean_address(raw: str) -> str | None:
    # Cut before removing emails: "..., I'm alice@example.com" ends the address at "I'm".
    address = EMAIL.sub("", until_clause_end(raw)).strip(" \t\n,;:.!\"'-–—")
    address = _ADDRESS_LEAD.sub("", _ADDRESS_TAIL.sub("", re.sub(r"\s+", " ", address)))
    # A street address has a house number or a postcode; this also rejects "is wrong".
    if len(address) < 6 or not re.search(r"[A-Za-z]", address) or not re.search(r"\d", address):
        return None
    return address[:300]


def until_clause_end(text: str) -> str:
    match = _CLAUSE_END.search(text)
    return (text[: match.start()] if match else text).strip(" \t\n,;:.!?\"'-–—")


def name_in(text: str) -> str | None:
    """ "My name is Bob Smith", "name: Bob Smith", "I'm Bob Smith" (capitalised; never an email)."""
    match = _NAME.search(text)
    if not match:
        return None
    name = until_clause_end(match.group("name") or match.group("capital") or "")
    name = re.split(r"\s+(?:and|from|at|with|in)\b", name, maxsplit=1)[0].strip(" .,")
    return _tidy_name(name)


def buyer_in(text: str) -> str | None:
    """ "... for Dana Fox, ..." in an order: the name it is for (two capitalised words)."""
    match = _FOR_NAME.search(text)
    return _tidy_name(match.group(1)) if match else None


def answered_name(text: str) -> str | None:
    """A message that is just a name, given after the assistant asked for it."""
    found = name_in(text)
    if found:
        return found
    bare = _NAME_LEAD.sub("", EMAIL.sub("", text).strip(" \t\n,;:.!\"'"), count=1)
    if not _NAME_ONLY.match(bare) or _NOT_NAMES.match(bare) or len(bare) < 2:
        return None
    return _tidy_name(bare)


def _tidy_name(name: str) -> str | None:
    name = re.sub(r"\s+", " ", name).strip(" .,")
    if len(name) < 2 or _NOT_NAMES.match(name):
        return None
    return name.title() if name.islower() else name


def quantity_in(text: str) -> int | None:
    match = _QUANTITY.search(text)
    if not match:
        return None
    raw = next(g for g in match.groups() if g is not None).lower()
    value = _NUMBER_WORDS.get(raw) or int(raw)
    return value if value >= 1 else None  # above the limit: the tool refuses it, never a silent 1


def bought_product(text: str) -> str:
    """ "I want to order 2 Wireless Mouse (MSE-WL500) shipped to ..." → "Wireless Mouse"; "buy one" → ""."""
    phrase = _BUY_TAIL.sub("", _BUY_LEAD.sub("", text.strip(), count=1))
    phrase = _LEADING_ARTICLE.sub("", phrase.strip()).strip(" ,;:.!?\"'")
    return "" if _REFERENCE.match(phrase) or SKU_CODE.fullmatch(phrase) else phrase[:100]


def price_wishes(text: str) -> tuple[str | None, float | None]:
    """("price_low_to_high" | "price_high_to_low" | None, a price cap) from "cheapest", "under $50"."""
    sort = "price_low_to_high" if _SORT_WORDS.search(text) else None
    if _DEAR_WORDS.search(text):
        sort = "price_high_to_low"
    cap = _MAX_PRICE.search(text)
    return sort, float(cap.group(1)) if cap else None


def without_price_words(text: str) -> str:
    text = _MAX_PRICE.sub(" ", _DEAR_WORDS.sub(" ", _SORT_WORDS.sub(" ", text)))
    return re.sub(r"\s+", " ", text).strip()


def product_query(text: str) -> str:
    """ "Do you sell noise cancelling headphones?" → "noise cancelling headphones"."""
    query = _PRODUCT_LEAD.sub("", _GREETING_LEAD.sub("", text.strip()), count=1)
    query = _PRODUCT_TAIL.sub("", query)
    query = _LEADING_ARTICLE.sub("", query.strip()).strip(" ,;:.!?\"'")
    return query[:200] or question_query(text)


def question_query(text: str) -> str:
    query = _GREETING_LEAD.sub("", text.strip()).strip(" ,;:.!?\"'")
    return (query or text.strip())[:200]


def is_reference(text: str) -> bool:
    """ "one", "it", "that one": a product named by pointing at the one just shown."""
    return bool(_REFERENCE.match(text.strip(" ,;:.!?\"'")))
