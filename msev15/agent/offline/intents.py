"""What the offline model recognises: a small table of intents, and a check for words it cannot read."""

from __future__ import annotations

import re
from dataclasses import dataclass

from msev15.agent.offline.slots import SKU_CODE, SKU_NAMED

_I = re.IGNORECASE


@dataclass(frozen=True, slots=True)
class Intent:
    """One kind of request: how it is recognised, which tool serves it and what that tool needs."""

    name: str
    pattern: re.Pattern[str]
    tool: str | None = None
    needs: tuple[str, ...] = ()


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, _I)


_ORDER_REF = (
    r"(?:it|they|them|my (?:order|package|parcel|stuff|items?)|the (?:order|package|parcel)|ORD[-\s#]?\d+)"
)

# First match wins, so the specific requests come before the general ones.
INTENTS: tuple[Intent, ...] = (
    Intent(
        "help",
        _p(r"^\W*help\b|\bhelp me\b\W*$|what (?:else )?can you do|what do you do\W*$|how does this work"),
    ),
    Intent(
        "arrival",
        _p(
            r"\bwhen (?:will|would|does|do|is|should|can)\s+(?:i (?:get|receive)\s+)?"
            rf"(?:{_ORDER_REF}\s*){{0,2}}"
            r"(?:be )?(?:arrive|arriving|come|coming|get here|be (?:here|delivered)|delivered|reach me)"
            rf"|\bwhen (?:should|can) i expect {_ORDER_REF}"
            r"|\bwhen (?:will|do|can|should) i (?:get|receive) (?:it|them|my (?:order|package|parcel))"
            rf"|\bhow long (?:until|before|till) {_ORDER_REF}\b|\b(?:eta|delivery date|expected delivery)\b"
        ),
        "get_order",
        ("order_id", "email"),
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
        "buy",
        _p(
            r"\b(?:buy|purchase)\b(?!\s+(?:it|them)\s+(?:back|elsewhere))|\bplace an? (?:new )?order\b"
            r"|\b(?:want|like|wish|need) to order\b|^\W*order (?:\d{1,3}|one|two|three|an?) \w"
            r"|\b(?:want|like|wish|need) to get (?:an?|one|two|\d+|some|the) "
            r"(?!refund|return|update|receipt|confirmation|status|tracking)"
            r"|\bi'?ll take (?:it|one|two|\d+|the)\b|\bi'?d like (?:one|two|\d+)\b"
            r"|\bcan i (?:get|have|order) (?:an?|one|two|\d+|some) "
            r"(?!refund|return|update|receipt|confirmation|status|tracking|invoice|discount|answer)"
        ),
        "create_order",
        ("product", "email", "name", "address"),
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
        _p(r"\breturn(?:ing)?\b|\bsend (?:it |them |(?:the |my )?(?:order |items? )?)?back\b|\brefund\b"),
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
            r"|\bcheapest\b|\bmost expensive\b|\bunder \$\s*\d|\bshow me\b(?![^.?!]*\border)"
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
BY_NAME = {intent.name: intent for intent in INTENTS}
SMALL_TALK = frozenset({"help", "thanks", "greeting"})

# Only when nothing specific matched and no earlier request is waiting for an answer.
QUESTION = Intent(
    "question",
    _p(r"\?\s*$|^\W*(?:how|what|when|why|where|which|who|can|could|do|does|is|are|will|should)\b"),
    "search_faq",
    ("query",),
)
UNKNOWN = Intent("unknown", _p(r"(?!)"))
FOREIGN = Intent("foreign", _p(r"(?!)"))


def detect(text: str) -> Intent | None:
    """The first specific intent of the table the text matches."""
    for intent in INTENTS:
        if intent.pattern.search(text):
            return intent
    return None


# Another language ------------------------------------------------------------------------------

# Everyday words of the languages customers most often write in instead of English. A message with
# several of them and few English words is not guessed at: a wrong action is worse than a question.
_FOREIGN_WORDS = frozenset(
    # Spanish
    "quiero quisiera mi mis pedido pedidos cancelar devolver donde dónde está esta cuando cuándo llega "
    "hola gracias por favor necesito puedo puede el la los las del una es mí envío correo dirección "
    "comprar precio cuánto cuesta tienen ayuda "
    # French
    "je veux voudrais ma mon mes commande annuler retourner où est quand arrive bonjour merci "
    "s'il vous plaît besoin acheter prix combien livraison adresse aide le les des une c'est "
    # German
    "ich möchte meine meinen bestellung stornieren zurückgeben wo ist wann kommt hallo danke bitte "
    "brauche kaufen preis wie viel lieferung adresse hilfe und der die das ein eine nicht "
    # Portuguese, Italian, Dutch
    "quero meu minha encomenda cancelar obrigado voglio vorrei il mio ordine annullare grazie dove "
    "quando ik wil mijn bestelling annuleren waar wanneer dank alstublieft".split()
)
_ENGLISH_WORDS = frozenset(
    "i i'm i'd my me you your the a an to of for and is are was it this that what where when how can "
    "could would please order orders cancel return change address ship shipping send email want need "
    "like buy help thanks thank hi hello do does did with from on in at be have has not".split()
)
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def foreign(text: str) -> bool:
    """Whether the message is written mostly in another language (ids and emails left aside)."""
    words = [w.lower() for w in _WORDS.findall(text) if len(w) > 1]
    others = sum(1 for w in words if w in _FOREIGN_WORDS and w not in _ENGLISH_WORDS)
    english = sum(1 for w in words if w in _ENGLISH_WORDS)
    accented = bool(re.search(r"[¿¡ñçßäöüàâéèêëîïôûù]", text, _I))
    return (others >= 2 or (others >= 1 and accented)) and others > 2 * english
