"""Who is asking: the one identity every credential becomes at the edge, handed down to the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Role = Literal["open", "tenant", "customer"]


class _AnyUser:
    """The scope of a tenant-wide caller: every session of the tenant, owned or not."""

    def __repr__(self) -> str:
        return "ANY_USER"


ANY_USER: Final = _AnyUser()
UserScope = str | _AnyUser  # an end user's id, or ANY_USER


@dataclass(frozen=True, slots=True)
class Principal:
    """One caller: a tenant, maybe one end user, maybe an email the shop has verified.

    `open` is development mode (no API_KEYS), `tenant` a shop's API key (tenant-wide), and
    `customer` a client or visitor token (one end user). A tenant-wide caller may still act
    for one end user by naming `user_id`.
    """

    tenant_id: str
    user_id: str | None = None
    verified_email: str | None = None
    role: Role = "open"

    @property
    def tenant_wide(self) -> bool:
        return self.role != "customer"

    @property
    def scope(self) -> UserScope:
        """What the session stores may show this caller: one user's sessions, or all of the tenant's."""
        return self.user_id if self.user_id is not None else ANY_USER
