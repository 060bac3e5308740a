"""Subjects: validation, wildcard matching and the subscription index.

Subjects are handled as ``bytes`` end to end: they come off the wire as bytes
and go back onto it as bytes, so the hot path never decodes them.
"""

from __future__ import annotations

from typing import Generic, Iterable, Protocol, TypeVar

_WHITESPACE = (b" ", b"\t", b"\r", b"\n", b"\x0c", b"\x0b")
STAR = b"*"
GT = b">"


def is_valid_subject(subject: bytes) -> bool:
    """A subscription subject: non-empty tokens, no whitespace, `>` only last."""
    if not subject:
        return False
    for ws in _WHITESPACE:
        if ws in subject:
            return False
    tokens = subject.split(b".")
    for i, tok in enumerate(tokens):
        if not tok:
            return False
        if tok == GT and i != len(tokens) - 1:
            return False
    return True


def is_valid_subscription_subject(subject: bytes) -> bool:
    """What nats-server's SUB accepts: non-empty tokens, `>` only last.

    Spaces, tabs, CR and LF cannot reach here (they split the SUB line);
    other bytes, form feed included, are part of the subject.
    """
    if not subject:
        return False
    tokens = subject.split(b".")
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if not tok or (tok == GT and i != last):
            return False
    return True


def is_literal(subject: bytes) -> bool:
    """True when no token is a wildcard (`*` or `>` as a whole token)."""
    for tok in subject.split(b"."):
        if tok == STAR or tok == GT:
            return False
    return True


def is_valid_literal_subject(subject: bytes) -> bool:
    """A subject a pedantic client may publish to: non-empty tokens, none a
    wildcard. Like nats-server's IsValidLiteralSubject this does not look for
    whitespace (a PUB subject cannot hold a space or tab; CR or FF pass)."""
    if not subject:
        return False
    for tok in subject.split(b"."):
        if not tok or tok == STAR or tok == GT:
            return False
    return True


def matches(pattern: bytes, subject: bytes) -> bool:
    """Does ``subject`` match the (possibly wildcard) ``pattern``?

    Wildcards in ``subject`` are matched token by token like any literal, as
    nats-server does for a publish to a wildcard subject.
    """
    ptoks = pattern.split(b".")
    stoks = subject.split(b".")
    for i, ptok in enumerate(ptoks):
        if ptok == GT:
            return len(stoks) > i
        if i >= len(stoks):
            return False
        if ptok != STAR and ptok != stoks[i]:
            return False
    return len(ptoks) == len(stoks)


def pattern_covers(pattern: bytes, other: bytes) -> bool:
    """Does every subject matched by ``other`` also match ``pattern``?"""
    ptoks = pattern.split(b".")
    otoks = other.split(b".")
    for i, ptok in enumerate(ptoks):
        if ptok == GT:
            return len(otoks) > i
        if i >= len(otoks):
            return False
        otok = otoks[i]
        if otok == GT:
            return False
        if ptok != STAR and (otok == STAR or ptok != otok):
            return False
    return len(ptoks) == len(otoks)


class Subscription(Protocol):
    subject: bytes


S = TypeVar("S", bound=Subscription)


class _Node(Generic[S]):
    __slots__ = ("children", "subs")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node[S]] = {}
        self.subs: list[S] = []


class SubjectIndex(Generic[S]):
    """A token trie of subscriptions; ``match`` walks only the branches that can match."""

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, sub: S) -> None:
        node = self._root
        for tok in sub.subject.split(b"."):
            child = node.children.get(tok)
            if child is None:
                child = node.children[tok] = _Node()
            node = child
        node.subs.append(sub)
        self._count += 1

    def remove(self, sub: S) -> bool:
        """Remove ``sub``; prune branches left empty. False if it was not there."""
        path: list[tuple[_Node[S], bytes]] = []
        node = self._root
        for tok in sub.subject.split(b"."):
            child = node.children.get(tok)
            if child is None:
                return False
            path.append((node, tok))
            node = child
        try:
            node.subs.remove(sub)
        except ValueError:
            return False
        self._count -= 1
        for parent, tok in reversed(path):
            child = parent.children[tok]
            if child.subs or child.children:
                break
            del parent.children[tok]
        return True

    def match(self, subject: bytes) -> list[S]:
        """All subscriptions whose subject matches the literal ``subject``.

        A subject with an empty token (``a..b``, ``.a``, ``a.``, empty)
        matches nothing, as in nats-server's sublist.
        """
        out: list[S] = []
        if not subject or subject[:1] == b"." or subject[-1:] == b"." or b".." in subject:
            return out
        _collect(self._root, subject.split(b"."), 0, out)
        return out

    def __iter__(self) -> Iterable[S]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield from node.subs
            stack.extend(node.children.values())


def _collect(node: _Node[S], tokens: list[bytes], i: int, out: list[S]) -> None:
    children = node.children
    if i == len(tokens):
        out.extend(node.subs)
        return
    gt = children.get(GT)
    if gt is not None:
        out.extend(gt.subs)
    star = children.get(STAR)
    if star is not None:
        _collect(star, tokens, i + 1, out)
    tok = tokens[i]
    if tok != STAR and tok != GT:  # wildcard keys were walked above
        lit = children.get(tok)
        if lit is not None:
            _collect(lit, tokens, i + 1, out)
