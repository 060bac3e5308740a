"""Client authentication and per-user permissions, as nats-server does them.

Pure: no I/O. bcrypt and nkeys are imported only when a configured user
needs them, so a broker without such users runs without those packages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any

from leaf.errors import ConfigError
from leaf.subjects import SubjectIndex, is_literal, is_valid_subject, matches, pattern_covers

AUTH_VIOLATION = "Authorization Violation"
PROVEN_CACHE_SIZE = 4096

# A password starting with this is taken for a bcrypt hash (as nats-server does).
BCRYPT_PREFIX = "$2"
# $2a$/$2b$/$2y$, a two-digit cost 04-31, then 22 salt + 31 hash characters
# of bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def is_bcrypt_hash(password: str) -> bool:
    """Whether ``password`` is shaped like a bcrypt hash bcrypt.checkpw accepts."""
    return _BCRYPT_HASH.fullmatch(password) is not None


@dataclass(frozen=True)
class _Pattern:
    subject: bytes


class _PatternSet:
    """Subject patterns with a fast "does any match this literal subject" test."""

    def __init__(self, patterns: tuple[bytes, ...]) -> None:
        self.patterns = patterns
        self._index: SubjectIndex[_Pattern] = SubjectIndex()
        for p in patterns:
            self._index.add(_Pattern(p))

    def matches(self, subject: bytes) -> bool:
        if is_literal(subject):
            return bool(self._index.match(subject))
        return any(matches(p, subject) for p in self.patterns)

    def covers(self, subject: bytes) -> bool:
        """For a wildcard SUB: is it entirely inside one allowed pattern?"""
        return any(pattern_covers(p, subject) for p in self.patterns)



@dataclass(frozen=True)
class Permissions:
    """Allow/deny lists for publish and subscribe (None allow = everything)."""

    publish_allow: tuple[bytes, ...] | None = None
    publish_deny: tuple[bytes, ...] = ()
    subscribe_allow: tuple[bytes, ...] | None = None
    subscribe_deny: tuple[bytes, ...] = ()
    _sets: dict[str, _PatternSet] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny"):
            value = getattr(self, name)
            if value is not None:
                self._sets[name] = _PatternSet(value)

    def can_publish(self, subject: bytes) -> bool:
        allow = self._sets.get("publish_allow")
        if allow is not None and not allow.matches(subject):
            return False
        deny = self._sets.get("publish_deny")
        return not (deny and deny.matches(subject))

    def can_subscribe(self, subject: bytes, queue: bytes = b"") -> bool:
        allow = self._sets.get("subscribe_allow")
        if allow is not None:
            ok = allow.matches(subject) if is_literal(subject) else allow.covers(subject)
            if not ok:
                return False
        deny = self._sets.get("subscribe_deny")
        if deny and deny.patterns:
            if is_literal(subject):
                return not deny.matches(subject)
            # As nats-server: a wildcard SUB is refused when a deny pattern
            # matches it token for token (deny ``a.*`` refuses ``SUB a.>``,
            # deny ``a.>`` refuses ``SUB a.*``); narrower denied subjects
            # inside it (deny ``a.b``, ``SUB a.*``) are filtered per message.
            return not any(matches(p, subject) for p in deny.patterns)
        return True

    def deny_delivery(self, subject: bytes) -> bool:
        """Messages on ``subject`` must not reach this user (deny wins)."""
        deny = self._sets.get("subscribe_deny")
        return bool(deny and deny.patterns and deny.matches(subject))

    @classmethod
    def from_config(cls, raw: Any, where: str) -> Permissions:
        """Accept nats-server's shapes: ``publish = ["a.>"]`` or
        ``publish = {allow = [...], deny = [...]}`` (same for subscribe)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: permissions must be a table, got {raw!r}")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in ("publish", "subscribe"):
                raise ConfigError(f"{where}.{key}: unknown permissions key (publish, subscribe)")
            if isinstance(value, (list, str)):
                out[f"{key}_allow"] = _subject_list(value, f"{where}.{key}")
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a list or a table, got {value!r}")
            for sub_key, items in value.items():
                if sub_key not in ("allow", "deny"):
                    raise ConfigError(f"{where}.{key}.{sub_key}: unknown key (allow, deny)")
                out[f"{key}_{sub_key}"] = _subject_list(items, f"{where}.{key}.{sub_key}")
        return cls(**out)


def _subject_list(value: Any, where: str) -> tuple[bytes, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of subjects, got {value!r}")
    subjects = tuple(v.encode() for v in value)
    for s in subjects:
        if not is_valid_subject(s):
            raise ConfigError(f"{where}: invalid subject {s.decode()!r}")
    return subjects


@dataclass(frozen=True)
class User:
    """A configured identity: user+password (plain or bcrypt) or an nkey."""

    user: str = ""
    password: str = ""
    nkey: str = ""
    permissions: Permissions = field(default_factory=Permissions)

    def password_ok(self, given: str) -> bool:
        if self.password.startswith(BCRYPT_PREFIX):
            import bcrypt

            try:
                return bcrypt.checkpw(given.encode(), self.password.encode())
            except ValueError:
                return False
        return hmac.compare_digest(self.password.encode(), given.encode())


ANONYMOUS = User()


class Authenticator:
    """Decides whether a CONNECT may proceed, and as whom."""

    def __init__(self, token: str = "", users: tuple[User, ...] = ()) -> None:
        self.token = token
        self.users = {u.user: u for u in users if u.user}
        self.nkeys = {u.nkey: u for u in users if u.nkey}
        if token and users:
            raise ConfigError("authorization: token cannot be combined with users")
        # Last line of defence (config names the offending key first): every
        # user must be reachable exactly one way, never shadowed or half-made.
        for u in users:
            if u.nkey and (u.user or u.password):
                raise ConfigError("authorization: nkey users do not take usernames or passwords")
            if not u.nkey and not u.user:
                raise ConfigError("authorization: a user needs a name or an nkey")
        if len(self.users) + len(self.nkeys) != len(users):
            raise ConfigError("authorization: duplicate user names or nkeys")
        self._proven: set[bytes] = set()  # digests of user+password already checked

    @property
    def required(self) -> bool:
        return bool(self.token or self.users or self.nkeys)

    @property
    def needs_nonce(self) -> bool:
        return bool(self.nkeys)

    def authenticate(self, opts: dict[str, Any], nonce: bytes) -> User | None:
        """The user a CONNECT proves to be, or None (Authorization Violation)."""
        if not self.required:
            return ANONYMOUS
        if self.token:
            given = opts.get("auth_token")
            if isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode()):
                return ANONYMOUS
            return None
        nkey = opts.get("nkey")
        if self.nkeys and isinstance(nkey, str) and nkey:
            user = self.nkeys.get(nkey)
            if user is None or not _nkey_signature_ok(nkey, opts.get("sig"), nonce):
                return None
            return user
        name, password = opts.get("user"), opts.get("pass")
        if isinstance(name, str) and isinstance(password, str):
            user = self.users.get(name)
            if user is None:
                return None
            # A bcrypt check costs ~0.1 s; remember passwords already proven.
            proof = hashlib.sha256(f"{name}\0{password}".encode()).digest()
            if proof in self._proven or user.password_ok(password):
                if len(self._proven) < PROVEN_CACHE_SIZE:
                    self._proven.add(proof)
                return user
        return None


def _nkey_signature_ok(public_key: str, sig: Any, nonce: bytes) -> bool:
    if not isinstance(sig, str) or not nonce:
        return False
    raw_sig = _b64decode(sig)
    key = _decode_public_nkey(public_key)
    if raw_sig is None or key is None:
        return False
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(key).verify(nonce, raw_sig)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def _decode_public_nkey(text: str) -> bytes | None:
    """The 32-byte Ed25519 key inside a user nkey (``U...``), checksum verified."""
    import nkeys

    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        return None
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:
        return None
    body, crc = raw[:-2], raw[-2:]
    if nkeys.crc16_checksum(body) != crc:
        return None
    return body[1:]


def _b64decode(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            return decode(padded)
        except ValueError:
            continue
    return None
