"""Admin API authentication (issue 3, item 6): a bearer JWT naming the user and the facility
groups they administer. Signature (RS256/ES256 against configured public keys), expiry, not-before,
issuer and audience are verified; anything else is a 401 that says nothing about why beyond
"authentication failed"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .domain.errors import NotFound, Unauthorized
from .domain.validation import is_valid_id

GROUPS_CLAIM = "facility_groups"
# The platform team's role (issue 15 item 4): operations across every facility group, such as
# dead-letter redrive. Only the JSON value true grants it; facility-group administrators' tokens
# never carry it (docs/operations-redrive.md).
OPERATOR_CLAIM = "archsync_operator"
ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True)
class Caller:
    user_id: str
    display_name: str
    facility_group_ids: frozenset[str]
    operator: bool = False

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
        # Parsed once, so a bad key fails at start-up; grouped by the one algorithm each key
        # verifies, so RSA and EC keys can be configured together (a rotation from one family to
        # the other) and a token is only ever checked against keys of its own algorithm.
        self._keys: dict[str, list[Any]] = {alg: [] for alg in ALGORITHMS}
        for pem in public_keys_pem:
            key = _load_key(pem)
            self._keys[_algorithm(key)].append(key)
        self._audience, self._issuer, self._leeway = audience, issuer, leeway_seconds

    def verify(self, headers: Mapping[str, str]) -> Caller:
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token")
        token = token.strip()
        try:
            alg = self._jwt.get_unverified_header(token).get("alg")
        except self._jwt.PyJWTError as e:
            raise Unauthorized(f"invalid token: {type(e).__name__}") from None
        # RFC 8725 3.1: the algorithm is chosen by the key, never by the token. A token whose
        # algorithm no configured key uses (none, HS256, ES256 with only RSA keys ...) is refused
        # here; before, PyJWT raised TypeError on a key of the other family (issue 11 item 13).
        keys = self._keys.get(alg, []) if isinstance(alg, str) else []
        if not keys:
            raise Unauthorized("invalid token: algorithm")
        claims = None
        for key in keys:  # several keys of one algorithm: rotation without downtime
            try:
                claims = self._jwt.decode(
                    token, key=key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                    leeway=self._leeway, options={"require": ["exp", "iat", "sub", "aud", "iss"]})
                break
            except self._jwt.InvalidSignatureError:
                continue
            except self._jwt.PyJWTError as e:
                raise Unauthorized(f"invalid token: {type(e).__name__}") from None
        if claims is None:
            raise Unauthorized("invalid token: signature")
        operator = claims.get(OPERATOR_CLAIM) is True
        groups = claims.get(GROUPS_CLAIM, [] if operator else None)  # an operator may administer no group
        if not isinstance(groups, list) or not all(is_valid_id(g) for g in groups):
            raise Unauthorized(f"invalid token: {GROUPS_CLAIM} claim")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("invalid token: sub")
        name = claims.get("name")
        return Caller(sub, name if isinstance(name, str) else "", frozenset(groups), operator)


def _load_key(pem: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem.encode())


def _algorithm(key: Any) -> str:
    """RS256 for an RSA key, ES256 for an EC P-256 key (RFC 7518 3.4: ES256 is P-256 only)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise RuntimeError("admin JWT public keys must be RSA (RS256) or EC P-256 (ES256)")
