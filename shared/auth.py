"""Admin API authentication (issue 3, item 6): a bearer JWT naming the user and the facility
groups they administer. Signature (RS256/ES256 against configured public keys), expiry, not-before,
issuer and audience are verified; anything else is a 401 that says nothing about why beyond
"authentication failed"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .domain.errors import NotFound, Unauthorized
from .domain.validation import is_valid_id

GROUPS_CLAIM = "facility_groups"
ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True)
class Caller:
    user_id: str
    display_name: str
    facility_group_ids: frozenset[str]

    def require_group(self, facility_group_id: str) -> None:
        """A caller sees only its own groups; anything else is answered as if it did not exist
        (404, not 403), so group ids cannot be probed (rule 8)."""
        if facility_group_id not in self.facility_group_ids:
            raise NotFound("facility group not found")

    @property
    def label(self) -> str:
        return self.display_name or self.user_id


class JwtVerifier:
    def __init__(self, public_keys_pem: Sequence[str], audience: str, issuer: str, leeway_seconds: int = 30):
        if not public_keys_pem or not audience or not issuer:
            raise RuntimeError("admin JWT verification needs public keys, an audience and an issuer")
        import jwt  # only the admin function pays for it

        self._jwt = jwt
        self._keys = [_load_key(pem) for pem in public_keys_pem]  # parsed once: a bad key fails at start-up
        self._audience, self._issuer, self._leeway = audience, issuer, leeway_seconds

    def verify(self, headers: Mapping[str, str]) -> Caller:
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token")
        claims = None
        for key in self._keys:  # several keys: rotation without downtime
            try:
                claims = self._jwt.decode(
                    token.strip(), key=key, algorithms=list(ALGORITHMS), audience=self._audience, issuer=self._issuer,
                    leeway=self._leeway, options={"require": ["exp", "iat", "sub", "aud", "iss"]})
                break
            except self._jwt.InvalidSignatureError:
                continue
            except self._jwt.PyJWTError as e:
                raise Unauthorized(f"invalid token: {type(e).__name__}") from None
        if claims is None:
            raise Unauthorized("invalid token: signature")
        groups = claims.get(GROUPS_CLAIM)
        if not isinstance(groups, list) or not all(is_valid_id(g) for g in groups):
            raise Unauthorized(f"invalid token: {GROUPS_CLAIM} claim")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("invalid token: sub")
        name = claims.get("name")
        return Caller(sub, name if isinstance(name, str) else "", frozenset(groups))


def _load_key(pem: str):
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem.encode())
