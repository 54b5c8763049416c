"""Client and visitor tokens: JWT HS256 with `tid`, `sub`, `exp` and maybe `email`.

The format is documented (docs/api.md, README) so a shop's backend in any language can mint
tokens itself with the shared secret. Nothing of a token is ever logged.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from msev15.principal import Principal
from msev15.settings import Settings

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
MAX_TOKEN_BYTES = 4096
_REQUIRED = ("tid", "sub", "exp")


class TokenRejected(Exception):
    """The token is malformed, forged, expired or otherwise unusable; the reason is safe to show."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    tenant_id: str
    user_id: str
    customer_email: str | None
    expires_at: float


def looks_like_token(credential: str) -> bool:
    """A JWT is three base64url parts; an API key is anything else (so keys and tokens share a header)."""
    return credential.count(".") == 2


def load_secret(settings: Settings) -> bytes:
    """CLIENT_TOKEN_SECRET, or this host's own secret: created once in the data folder, mode 0600.

    Every worker of the host reads the same file; the first to start creates it atomically.
    Several hosts behind one load balancer must set CLIENT_TOKEN_SECRET.
    """
    if settings.client_token_secret is not None:
        return settings.client_token_secret.get_secret_value().encode()
    return _host_secret(settings.token_secret_path)


def _host_secret(path: Path) -> bytes:
    """Written whole to a private temp file, then linked into place: a reader never sees half a
    secret, and when two workers race the first link wins and both read the winner's."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".client_token_secret.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
                fh.flush()
                os.fsync(fh.fileno())
            os.link(temp, path)
            log.info("created the client-token secret %s (mode 0600); several hosts must share one", path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds under 32 bytes; delete it or set CLIENT_TOKEN_SECRET")
    return secret.encode()


def mint(
    secret: bytes, tenant_id: str, user_id: str, customer_email: str | None, ttl_seconds: int
) -> IssuedToken:
    expires = int(time.time()) + ttl_seconds
    claims: dict[str, object] = {"tid": tenant_id, "sub": user_id, "exp": expires}
    if customer_email is not None:
        claims["email"] = customer_email
    token = jwt.encode(claims, secret, algorithm=ALGORITHM)
    return IssuedToken(token, tenant_id, user_id, customer_email, float(expires))


def verify(secret: bytes, token: str) -> Principal:
    """The customer the token names, or TokenRejected: only HS256, `tid`, `sub` and `exp` required."""
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise TokenRejected(f"the token is over {MAX_TOKEN_BYTES} bytes")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": list(_REQUIRED), "verify_aud": False}
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("the token has expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRejected(f"the token has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:  # bad signature, other algorithm, alg none, garbage
        raise TokenRejected("the token is not valid") from None
    tenant, user, email = claims.get("tid"), claims.get("sub"), claims.get("email")
    if not (isinstance(tenant, str) and tenant and isinstance(user, str) and user):
        raise TokenRejected("the token's tid and sub must be non-empty strings")
    if email is not None and not (isinstance(email, str) and "@" in email):
        raise TokenRejected("the token's email claim is not an email address")
    return Principal(tenant, user, email.lower() if email else None, "customer")
