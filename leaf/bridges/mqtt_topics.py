"""MQTT topics <-> NATS subjects: the pure mapping under the MQTT bridge.

MQTT splits on ``/`` and NATS on ``.``, and an MQTT level may hold what a NATS token
cannot (a ``.``, whitespace, nothing at all) or what means something else there (a
leading ``$``, a whole ``*`` or ``>``). Each level is escaped on its own, reversibly, so
one topic gives one subject and that subject gives the topic back:

    in an MQTT level                       in the NATS token
    ``%`` (the escape character)           ``%25``
    ``.``                                  ``%2E``
    any char <= 0x20 (space, controls), 7F ``%XX``, e.g. ``%20``, ``%09``, ``%7F``
    ``$`` as the level's first char        ``%24``
    a level that is exactly ``*`` / ``>``  ``%2A`` / ``%3E``
    an empty level (``a//b``, ``/a``)      ``%`` (a token of its own)
    anything else, non-ASCII included      itself

Filter wildcards map ``+`` <-> ``*`` and ``#`` <-> ``>``. Decoding is lenient so that any
subject with a stray ``%`` still has a topic: only ``%XX`` below 0x80 (either case) is
decoded, every other ``%`` stays. A token that decodes to a ``/``, ``+``, ``#`` or NUL has
no place in an MQTT level: such subjects raise MappingError rather than change meaning.

Where MQTT and NATS matching differ, ``topic_matches`` and TopicRoute follow MQTT: ``a/#``
matches ``a`` (NATS ``a.>`` does not, see filter_to_subjects), and a filter that starts with
a wildcard does not match a topic whose first level starts with ``$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Sequence, Union

from leaf.errors import LeafError
from leaf.subjects import is_valid_subject

__all__ = ["MAX_TOPIC_BYTES", "MappingError", "SubjectRoute", "TopicRoute", "common_subject",
           "common_topic", "filter_to_subject", "filter_to_subjects", "lint_rules",
           "subject_to_filter", "subject_to_topic", "topic_matches", "topic_to_subject"]

MAX_TOPIC_BYTES = 65535  # MQTT's two-byte string length

_ESCAPES = {c: f"%{c:02X}" for c in (*range(0x21), ord("%"), ord("."), 0x7F)}
_DECODABLE = re.compile(r"%([0-7][0-9A-Fa-f])")
_NOT_IN_A_LEVEL = {"/": "'/'", "+": "'+'", "#": "'#'", "\x00": "NUL"}
_TO_NATS = {"+": "*", "#": ">"}
_TO_MQTT = {"*": "+", ">": "#"}
_WHITESPACE = (" ", "\t", "\r", "\n", "\x0b", "\x0c")

Capture = Union[str, list[str]]  # a one-item wildcard's item, or the rest wildcard's items


class MappingError(LeafError, ValueError):
    """A topic, subject, filter, pattern or template with no counterpart; the message names it."""


# -- escaping ------------------------------------------------------------------------------------

def _encode(level: str) -> str:
    if not level:
        return "%"
    if level == "*" or level == ">":
        return f"%{ord(level):02X}"
    token = level.translate(_ESCAPES)
    return "%24" + token[1:] if token[0] == "$" else token


def _decode(token: str, subject: str) -> str:
    if token == "%":
        return ""
    level = _DECODABLE.sub(lambda m: chr(int(m[1], 16)), token)
    for char, name in _NOT_IN_A_LEVEL.items():
        if char in level:
            raise MappingError(f"NATS subject {_show(subject)} has no MQTT topic: its token "
                               f"{token!r} would put {name} into a level")
    return level


# -- validation ----------------------------------------------------------------------------------

def _show(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def _mqtt_problem(text: str, is_filter: bool) -> str | None:
    """Why ``text`` is not a valid MQTT topic name (or filter), or None."""
    if not text:
        return "it is empty"
    if "\x00" in text:
        return "it contains NUL"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"it is {size} UTF-8 bytes, over MQTT's {MAX_TOPIC_BYTES}"
    if not is_filter:
        for wildcard in "+#":
            if wildcard in text:
                return f"it contains {wildcard!r} (wildcards belong in filters, not topic names)"
        return None
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be the whole last level"
        if "+" in level and level != "+":
            return f"'+' must be a whole level, not part of {level!r}"
    return None


def _nats_problem(text: str, literal: bool) -> str | None:
    """Why ``text`` is not a valid NATS subject (or pattern), or None; leaf.subjects decides."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    tokens = text.split(".")
    if not is_valid_subject(raw):
        if not text:
            return "it is empty"
        if any(ws in text for ws in _WHITESPACE):
            return "it contains whitespace"
        return "it has an empty token" if "" in tokens else "'>' must be the last token"
    if literal and ("*" in tokens or ">" in tokens):
        return "it has wildcards (a pattern maps with subject_to_filter)"
    return None


def _checked(text: str, what: str, problem: str | None) -> str:
    if problem is not None:
        raise MappingError(f"{what} {_show(text)} is invalid: {problem}")
    return text


def _join_topic(levels: list[str], subject: str) -> str:
    topic = "/".join(levels)
    if not topic:
        raise MappingError(f"NATS subject {_show(subject)} has no MQTT topic: it would be the "
                           "empty string")
    size = len(topic.encode("utf-8"))
    if size > MAX_TOPIC_BYTES:
        raise MappingError(f"NATS subject {_show(subject)} maps to a topic of {size} UTF-8 bytes, "
                           f"over MQTT's {MAX_TOPIC_BYTES}")
    return topic


# -- whole topics, subjects, filters and patterns ------------------------------------------------

def topic_to_subject(topic: str) -> str:
    """The subject for an MQTT topic name (no wildcards), level by level."""
    _checked(topic, "MQTT topic", _mqtt_problem(topic, is_filter=False))
    return ".".join(_encode(level) for level in topic.split("/"))


def subject_to_topic(subject: str) -> str:
    """The MQTT topic name for a subject without wildcards: topic_to_subject undone."""
    _checked(subject, "NATS subject", _nats_problem(subject, literal=True))
    return _join_topic([_decode(token, subject) for token in subject.split(".")], subject)


def filter_to_subject(topic_filter: str) -> str:
    """The NATS pattern written like an MQTT filter: ``+`` as ``*``, ``#`` as ``>``.

    The two do not match quite the same: see filter_to_subjects.
    """
    _checked(topic_filter, "MQTT topic filter", _mqtt_problem(topic_filter, is_filter=True))
    return ".".join(_TO_NATS.get(level) or _encode(level) for level in topic_filter.split("/"))


def filter_to_subjects(topic_filter: str) -> list[str]:
    """The NATS patterns that together match what ``topic_filter`` matches.

    ``a/#`` also matches ``a``, which ``a.>`` does not, so it needs ``a`` as well. The ``$``
    rule has no NATS pattern: a subscriber that starts with a wildcard filters those out.
    """
    pattern = filter_to_subject(topic_filter)
    return [pattern, pattern[:-2]] if pattern.endswith(".>") else [pattern]


def subject_to_filter(pattern: str) -> str:
    """The MQTT filter for a NATS pattern: ``*`` as ``+``, ``>`` as ``#``, tokens decoded."""
    _checked(pattern, "NATS subject pattern", _nats_problem(pattern, literal=False))
    return _join_topic([_TO_MQTT.get(token) or _decode(token, pattern)
                        for token in pattern.split(".")], pattern)


# -- matching ------------------------------------------------------------------------------------

def _capture(pattern: Sequence[str], items: Sequence[str], one: str, rest: str,
             rest_min: int) -> list[Capture] | None:
    """What each wildcard of ``pattern`` stands for in ``items``, or None when they do not match.

    ``one`` stands for one item, ``rest`` (last) for all remaining ones, at least ``rest_min``.
    """
    captures: list[Capture] = []
    for i, token in enumerate(pattern):
        if token == rest:
            if len(items) - i < rest_min:
                return None
            captures.append(list(items[i:]))
            return captures
        if i >= len(items):
            return None
        if token == one:
            captures.append(items[i])
        elif token != items[i]:
            return None
    return captures if len(pattern) == len(items) else None


def _mqtt_capture(levels: Sequence[str], topic_levels: Sequence[str]) -> list[Capture] | None:
    if levels[0] in ("+", "#") and topic_levels[0].startswith("$"):
        return None  # $SYS/... and the like are only matched by a filter that names them
    return _capture(levels, topic_levels, "+", "#", 0)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: ``#`` matches zero or more levels, and ``$`` topics need a literal start."""
    _checked(topic_filter, "MQTT topic filter", _mqtt_problem(topic_filter, is_filter=True))
    _checked(topic, "MQTT topic", _mqtt_problem(topic, is_filter=False))
    return _mqtt_capture(topic_filter.split("/"), topic.split("/")) is not None


def _fill(template: Sequence[str], captures: list[Capture], one: str, rest: str,
          convert: Callable[[str], str]) -> list[str]:
    out: list[str] = []
    taken = iter(captures)
    for token in template:
        if token == one:
            out.append(convert(next(taken)))  # type: ignore[arg-type]
        elif token == rest:
            out.extend(convert(item) for item in next(taken))
        else:
            out.append(token)
    return out


# -- configured routes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Side:
    """A pattern as the overlap check reads it (see _common)."""

    tokens: Sequence[str]
    one: str
    rest: str
    rest_min: int  # fewest items ``rest`` stands for
    dollar: bool  # an MQTT subscription: a leading wildcard skips levels starting with '$'


def _mqtt_filter_side(levels: Sequence[str]) -> _Side:
    return _Side(levels, "+", "#", 0, True)


def _nats_side(tokens: Sequence[str], rest_min: int = 1) -> _Side:
    return _Side(tokens, "*", ">", rest_min, False)


def _template_items(template: str, problem: str | None, separator: str, source: str,
                    source_items: Sequence[str], wildcards: dict[str, str]) -> list[str]:
    """The template split up, once it is valid and has the source's wildcards in order."""
    if problem is not None:
        raise MappingError(f"template {_show(template)} for {_show(source)} is invalid: {problem}")
    items = template.split(separator)
    wanted = [wildcards[item] for item in source_items if item in wildcards]
    got = [item for item in items if item in wildcards.values()]
    if got != wanted:
        raise MappingError(f"template {_show(template)} does not fit {_show(source)}: it must "
                           f"have the wildcards {' '.join(wanted) or '(none)'} in that order, "
                           f"it has {' '.join(got) or '(none)'}")
    return items


@dataclass(frozen=True)
class TopicRoute:
    """An import rule: MQTT topics matching ``topic_filter`` become subjects of the template.

    The template has the filter's wildcards in the filter's order (``+`` as ``*``, ``#`` as a
    last ``>``); its literal tokens are used as written, captured levels are escaped. When
    ``#`` stands for no level (``a/#`` matches ``a``) the ``>`` is left out: ``a/#`` with
    ``x.>`` maps ``a`` to ``x``. A template of only ``>`` would leave nothing, so it is refused
    unless the filter is ``#``. None: the filter's own escaping (``sensors/#`` -> ``sensors.>``).
    """

    topic_filter: str
    subject_template: str | None = None
    _levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = self.topic_filter
        levels = _checked(source, "MQTT topic filter", _mqtt_problem(source, True)).split("/")
        template = self.subject_template
        if template is None:
            template = filter_to_subject(source)
        tokens = _template_items(template, _nats_problem(template, literal=False), ".", source,
                                 levels, _TO_NATS)
        if tokens == [">"] and levels != ["#"]:
            prefix = "/".join(levels[:-1])
            raise MappingError(f"template '>' does not fit {self.topic_filter!r}: the filter "
                               f"matches {prefix!r} itself, which would get an empty subject "
                               f"({prefix + '/+/#'!r} with '*.>' leaves it out)")
        object.__setattr__(self, "subject_template", template)
        object.__setattr__(self, "_levels", tuple(levels))
        object.__setattr__(self, "_tokens", tuple(tokens))

    def subject_for(self, topic: str) -> str | None:
        """The subject for ``topic``, None when the filter does not match it."""
        _checked(topic, "MQTT topic", _mqtt_problem(topic, is_filter=False))
        captures = _mqtt_capture(self._levels, topic.split("/"))
        if captures is None:
            return None
        return ".".join(_fill(self._tokens, captures, "*", ">", _encode))

    def common_subject(self, subject_pattern: str) -> str | None:
        """A subject this route can publish that ``subject_pattern`` matches, or None."""
        _checked(subject_pattern, "NATS subject pattern", _nats_problem(subject_pattern, False))
        # '#' stands for no level only after a literal or '+' level: then '>' is left out.
        empty_rest = self._levels[-1] == "#" and len(self._levels) > 1
        tokens = _common(_nats_side(self._tokens, 0 if empty_rest else 1),
                         _nats_side(subject_pattern.split(".")))
        return None if tokens is None else ".".join(tokens)


@dataclass(frozen=True)
class SubjectRoute:
    """An export rule: subjects matching ``subject_pattern`` become topics of the template.

    The template has the pattern's wildcards in the pattern's order (``*`` as ``+``, ``>`` as a
    last ``#``); its literal levels are used as written, captured tokens are decoded. Matching
    is NATS's: ``a.>`` does not match ``a``. None: the pattern's own decoding.
    """

    subject_pattern: str
    topic_template: str | None = None
    _tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _levels: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = self.subject_pattern
        tokens = _checked(source, "NATS subject pattern", _nats_problem(source, False)).split(".")
        template = self.topic_template
        if template is None:
            template = subject_to_filter(source)
        levels = _template_items(template, _mqtt_problem(template, is_filter=True), "/", source,
                                 tokens, _TO_MQTT)
        object.__setattr__(self, "topic_template", template)
        object.__setattr__(self, "_tokens", tuple(tokens))
        object.__setattr__(self, "_levels", tuple(levels))

    def topic_for(self, subject: str) -> str | None:
        """The topic for ``subject``, None when the pattern does not match it.

        MappingError when it matches but a captured token has no MQTT level (see _decode).
        """
        _checked(subject, "NATS subject", _nats_problem(subject, literal=True))
        captures = _capture(self._tokens, subject.split("."), "*", ">", 1)
        if captures is None:
            return None
        levels = _fill(self._levels, captures, "+", "#", lambda token: _decode(token, subject))
        return _join_topic(levels, subject)

    def common_topic(self, topic_filter: str) -> str | None:
        """A topic this route can publish that ``topic_filter`` takes, or None.

        Unlike the module's common_topic(filter, template) this knows that the template's
        ``#`` gets at least one level and that its ``+`` may get a ``$`` level.
        """
        levels = _checked(topic_filter, "MQTT topic filter", _mqtt_problem(topic_filter, True))
        found = _common(_Side(self._levels, "+", "#", 1, False),
                        _mqtt_filter_side(levels.split("/")))
        return None if found is None else "/".join(found)


# -- overlaps and lint ---------------------------------------------------------------------------

def _example(side: _Side, start: int, at_least: int) -> list[str] | None:
    """The shortest items ``side.tokens[start:]`` matches, made ``at_least`` long if it can be."""
    tail = side.tokens[start:]
    out: list[str] = []
    for token in tail:
        if token == side.rest:
            out += ["x"] * side.rest_min
        else:
            out.append("x" if token == side.one else token)
    if len(out) < at_least:
        if not tail or tail[-1] != side.rest:
            return None
        out += ["x"] * (at_least - len(out))
    return out


def _common(a: _Side, b: _Side) -> list[str] | None:
    """Items (levels or tokens) that both ``a`` and ``b`` match, or None when there are none."""
    out: list[str] = []
    i = 0
    while True:
        ta = a.tokens[i] if i < len(a.tokens) else None
        tb = b.tokens[i] if i < len(b.tokens) else None
        if ta == a.rest or tb == b.rest:
            tail = _example(b, i, a.rest_min) if ta == a.rest else _example(a, i, b.rest_min)
            if tail is None:
                return None
            out += tail
            break
        if ta is None or tb is None:
            if ta is None and tb is None:
                break
            return None
        if ta == a.one:
            out.append("x" if tb == b.one else tb)
        elif tb == b.one or tb == ta:
            out.append(ta)
        else:
            return None
        i += 1
    if out in ([], [""]):  # no topic: one empty level is the empty string
        if a.tokens[-1] != a.rest or b.tokens[-1] != b.rest:
            return None
        out.append("x")  # both rest wildcards can take one more item
    for side in (a, b):
        if side.dollar and side.tokens[0] in (side.one, side.rest) and out[0].startswith("$"):
            return None
    return out


def common_topic(filter_a: str, filter_b: str) -> str | None:
    """A topic both MQTT filters match (``$`` rule included), or None when they are disjoint."""
    sides = [_mqtt_filter_side(_checked(f, "MQTT topic filter", _mqtt_problem(f, True)).split("/"))
             for f in (filter_a, filter_b)]
    levels = _common(*sides)
    return None if levels is None else "/".join(levels)


def common_subject(pattern_a: str, pattern_b: str) -> str | None:
    """A subject both NATS patterns match, or None when they are disjoint."""
    sides = [_nats_side(_checked(p, "NATS subject pattern", _nats_problem(p, False)).split("."))
             for p in (pattern_a, pattern_b)]
    tokens = _common(*sides)
    return None if tokens is None else ".".join(tokens)


def lint_rules(imports: Sequence[tuple[str, str | None]],
               exports: Sequence[tuple[str, str | None]]) -> list[str]:
    """Human-readable problems with a bridge's rules; empty when there are none.

    ``imports`` are (topic filter, subject template) pairs, ``exports`` (subject pattern,
    topic template) pairs; an empty or None template maps by plain escaping, as in the config.
    Overlaps are reported with an example the two rules share.
    """
    problems: list[str] = []
    ins: list[TopicRoute] = []
    outs: list[SubjectRoute] = []
    for source, template in imports:
        try:
            ins.append(TopicRoute(source, template or None))
        except MappingError as exc:
            problems.append(f"import {source!r} -> {template!r} can never map: {exc}")
    for source, template in exports:
        try:
            outs.append(SubjectRoute(source, template or None))
        except MappingError as exc:
            problems.append(f"export {source!r} -> {template!r} can never map: {exc}")
    for a, b in combinations(ins, 2):
        topic = common_topic(a.topic_filter, b.topic_filter)
        if topic is not None:
            problems.append(f"imports {_label(a)} and {_label(b)} both take topics such as "
                            f"{topic!r}: those reach NATS twice")
    for c, d in combinations(outs, 2):
        subject = common_subject(c.subject_pattern, d.subject_pattern)
        if subject is not None:
            problems.append(f"exports {_label(c)} and {_label(d)} both take subjects such as "
                            f"{subject!r}: those reach MQTT twice")
    for imp in ins:
        for exp in outs:
            subject = imp.common_subject(exp.subject_pattern)
            topic = exp.common_topic(imp.topic_filter)
            if subject is not None and topic is not None:
                problems.append(
                    f"loop risk: import {_label(imp)} publishes subjects export {_label(exp)} "
                    f"takes (such as {subject!r}), and that export publishes topics the import "
                    f"takes (such as {topic!r}); the bridge drops its own echo, but any other "
                    "path between the two would loop")
    return problems


def _label(route: TopicRoute | SubjectRoute) -> str:
    if isinstance(route, TopicRoute):
        return f"{route.topic_filter!r} -> {route.subject_template!r}"
    return f"{route.subject_pattern!r} -> {route.topic_template!r}"
