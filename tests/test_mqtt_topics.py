"""MQTT topics <-> NATS subjects: leaf/bridges/mqtt_topics.py.

Tables pin each escaping rule both ways; Hypothesis checks the round trips over a broad
alphabet, and checks MQTT matching and the overlap search against leaf.subjects.matches (an
independent oracle), with MQTT's two differences (``a/#`` matches ``a``, the ``$`` rule)
modelled explicitly.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from leaf.bridges.mqtt_topics import (MAX_TOPIC_BYTES, MappingError, SubjectRoute, TopicRoute,
                                      common_subject, common_topic, filter_to_subject,
                                      filter_to_subjects, lint_rules, subject_to_filter,
                                      subject_to_topic, topic_matches, topic_to_subject)
from leaf.errors import LeafError
from leaf.subjects import is_valid_literal_subject, is_valid_subject, matches

# -- escaping, both ways -------------------------------------------------------------------------

TOPICS = [
    ("sensors/kitchen/temp", "sensors.kitchen.temp"),
    ("$SYS/broker/load", "%24SYS.broker.load"),
    ("a/$b/c$", "a.%24b.c$"),  # only a leading '$' is escaped
    ("a/./b", "a.%2E.b"),
    ("v1.2/x", "v1%2E2.x"),
    ("room 1/temp", "room%201.temp"),
    ("tab\there/cr\r/lf\n", "tab%09here.cr%0D.lf%0A"),
    ("bell\x07/del\x7f", "bell%07.del%7F"),
    ("/leading", "%.leading"),
    ("trailing/", "trailing.%"),
    ("a//b", "a.%.b"),
    ("/", "%.%"),
    ("50%", "50%25"),
    ("%", "%25"),
    ("%2E", "%252E"),
    ("*", "%2A"),
    (">", "%3E"),
    ("a/>/b", "a.%3E.b"),
    ("a*/b>/*c", "a*.b>.*c"),  # '*' and '>' inside a longer level stay
    ("-_:@~!'()[]{}=,;?&", "-_:@~!'()[]{}=,;?&"),
    ("café/温度/✓", "café.温度.✓"),
    ("\u0085nel/\u00a0nbsp", "\u0085nel.\u00a0nbsp"),  # non-ASCII passes, whitespace or not
]


@pytest.mark.parametrize("topic, subject", TOPICS, ids=[repr(t) for t, _ in TOPICS])
def test_topic_maps_to_its_subject_and_back(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    assert subject_to_topic(subject) == topic
    assert is_valid_literal_subject(subject.encode()) and is_valid_subject(subject.encode())


LENIENT = [
    ("a%zz.b", "a%zz/b"),  # not hex: kept
    ("50%", "50%"),  # a stray '%' at the end
    ("%2", "%2"),
    ("%2e", "."),  # lower-case hex is decoded too
    ("%E2%9C%93", "%E2%9C%93"),  # 0x80 and above: kept (no byte-level decoding)
    ("%41", "A"),  # not what topic_to_subject makes, but decoded
    ("$SYS.x", "$SYS/x"),  # a raw leading '$' has no escape to undo
    ("%.%", "/"),
    ("%%", "%%"),
    ("%25%", "%%"),
]


@pytest.mark.parametrize("subject, topic", LENIENT, ids=[s for s, _ in LENIENT])
def test_any_subject_with_a_stray_percent_still_has_a_topic(subject: str, topic: str) -> None:
    assert subject_to_topic(subject) == topic


FILTERS = [
    ("sensors/#", "sensors.>"),
    ("#", ">"),
    ("+", "*"),
    ("+/+/temp", "*.*.temp"),
    ("a/+/b/#", "a.*.b.>"),
    ("/+", "%.*"),
    ("+//#", "*.%.>"),
    ("$SYS/#", "%24SYS.>"),
    ("a/*/>/#", "a.%2A.%3E.>"),
    ("room 1/+", "room%201.*"),
]


@pytest.mark.parametrize("topic_filter, pattern", FILTERS, ids=[f for f, _ in FILTERS])
def test_filter_maps_to_its_pattern_and_back(topic_filter: str, pattern: str) -> None:
    assert filter_to_subject(topic_filter) == pattern
    assert subject_to_filter(pattern) == topic_filter
    assert is_valid_subject(pattern.encode())


def test_a_filter_ending_in_hash_also_needs_its_parent_in_nats() -> None:
    assert filter_to_subjects("a/+/#") == ["a.*.>", "a.*"]
    assert filter_to_subjects("#") == [">"]
    assert filter_to_subjects("a/b") == ["a.b"]
    assert filter_to_subjects("a%/#") == ["a%25.>", "a%25"]


# -- what cannot be mapped -----------------------------------------------------------------------

def raises(bad: str, *more: str) -> pytest.RaisesExc[MappingError]:
    """MappingError whose message names ``bad`` (as repr) and holds each of ``more``."""
    pattern = "".join(f"(?=.*{re.escape(part)})" for part in (repr(bad), *more))
    return pytest.raises(MappingError, match=re.compile(pattern, re.S))


def test_mapping_error_is_a_value_error_and_a_leaf_error() -> None:
    assert issubclass(MappingError, ValueError) and issubclass(MappingError, LeafError)


@pytest.mark.parametrize("topic, why", [
    ("", "empty"), ("a/+", "'+'"), ("+", "'+'"), ("a/#", "'#'"), ("a#b", "'#'"),
    ("nul\x00here", "NUL"), ("lone\udc80", "UTF-8"),
])
def test_invalid_topics_are_refused(topic: str, why: str) -> None:
    for call in (topic_to_subject, lambda t: topic_matches("#", t),
                 lambda t: TopicRoute("#").subject_for(t)):
        with raises(topic, why):
            call(topic)


def test_a_topic_over_65535_bytes_is_refused_and_one_at_the_limit_is_not() -> None:
    at_limit = "é" * (MAX_TOPIC_BYTES // 2) + "a"
    assert len(at_limit.encode()) == MAX_TOPIC_BYTES
    assert subject_to_topic(topic_to_subject(at_limit)) == at_limit
    with pytest.raises(MappingError, match="65537 UTF-8 bytes, over MQTT's 65535"):
        topic_to_subject(at_limit + "é")
    with pytest.raises(MappingError, match="65536 UTF-8 bytes"):
        subject_to_topic(".".join(["%"] * (MAX_TOPIC_BYTES + 2)))


@pytest.mark.parametrize("topic_filter, why", [
    ("", "empty"), ("a/#/b", "'#' must be the whole last level"), ("a#", "'#'"),
    ("#/", "'#'"), ("a/b+", "'+' must be a whole level, not part of 'b+'"), ("++", "'+'"),
    ("a\x00/#", "NUL"),
])
def test_invalid_filters_are_refused(topic_filter: str, why: str) -> None:
    for call in (filter_to_subject, lambda f: topic_matches(f, "a"), TopicRoute,
                 lambda f: common_topic(f, "#")):
        with raises(topic_filter, why):
            call(topic_filter)


@pytest.mark.parametrize("subject, why", [
    ("", "empty"), ("a..b", "empty token"), (".a", "empty token"), ("a.", "empty token"),
    ("a b", "whitespace"), ("a\tb", "whitespace"), ("a.*", "wildcards"), ("a.>", "wildcards"),
    ("a/b", "'/'"), ("a%2Fb", "'/'"), ("a%2fb", "'/'"), ("a+b", "'+'"), ("%2B", "'+'"),
    ("x.#", "'#'"), ("%23", "'#'"), ("a%00", "NUL"), ("a\x00", "NUL"), ("%", "empty string"),
])
def test_subjects_without_a_topic_are_refused(subject: str, why: str) -> None:
    with raises(subject, why):
        subject_to_topic(subject)


@pytest.mark.parametrize("pattern, why", [
    ("", "empty"), ("a.>.b", "'>' must be the last token"), ("a..*", "empty token"),
    ("a *", "whitespace"), ("*.a/b", "'/'"), ("%2B.>", "'+'"), ("%", "empty string"),
])
def test_patterns_without_a_filter_are_refused(pattern: str, why: str) -> None:
    with raises(pattern, why):
        subject_to_filter(pattern)
    with raises(pattern, why):
        SubjectRoute(pattern)


# -- MQTT matching -------------------------------------------------------------------------------

MATCHING = [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/+", "a/", True), ("+/+", "/x", True), ("+", "/", False), ("+/+", "/", True),
    ("a/#", "a", True), ("a/#", "a/", True), ("a/#", "a/b/c", True), ("a/#", "ab", False),
    ("#", "/", True), ("#", "a", True), ("a/+/#", "a", False), ("a/+/#", "a/b", True),
    ("#", "$SYS/load", False), ("+/load", "$SYS/load", False), ("+/#", "$x", False),
    ("$SYS/#", "$SYS/load", True), ("$SYS/+", "$SYS/load", True), ("/#", "/$x", True),
    ("a/+/c", "a/$b/c", True), ("*", "*", True), ("*", "a", False), ("a/>", "a/b", False),
]


@pytest.mark.parametrize("topic_filter, topic, expected", MATCHING,
                         ids=[f"{f} ~ {t}" for f, t, _ in MATCHING])
def test_topic_matching_follows_mqtt(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
    subject = TopicRoute(topic_filter).subject_for(topic)
    assert subject == (topic_to_subject(topic) if expected else None)


# -- routes --------------------------------------------------------------------------------------

def test_an_import_template_renames_the_literal_parts() -> None:
    route = TopicRoute("zigbee2mqtt/+/set/#", "z2m.*.cmd.>")
    assert route.subject_for("zigbee2mqtt/lamp 1/set/a/b") == "z2m.lamp%201.cmd.a.b"
    assert route.subject_for("zigbee2mqtt/$x/set/.") == "z2m.%24x.cmd.%2E"
    assert route.subject_for("zigbee2mqtt/lamp/get/a") is None
    assert route.subject_for("zigbee2mqtt/lamp") is None
    # '#' standing for no level: the template's '>' is left out.
    assert route.subject_for("zigbee2mqtt/lamp/set") == "z2m.lamp.cmd"
    assert TopicRoute("a/#", "x.>").subject_for("a") == "x"
    assert TopicRoute("#", ">").subject_for("a/b") == "a.b"
    assert TopicRoute("a/b", "x").subject_for("a/b") == "x"


def test_a_route_without_a_template_maps_by_plain_escaping() -> None:
    route = TopicRoute("sensors/#")
    assert route.subject_template == "sensors.>"
    assert route.subject_for("sensors/room 1/t.c") == "sensors.room%201.t%2Ec"
    assert route == TopicRoute("sensors/#", "sensors.>")
    export = SubjectRoute("cmd.*.%24set")
    assert export.topic_template == "cmd/+/$set"
    assert export.topic_for("cmd.lamp%201.%24set") == "cmd/lamp 1/$set"


def test_an_export_template_renames_the_literal_parts() -> None:
    route = SubjectRoute("z2m.*.cmd.>", "zigbee2mqtt/+/set/#")
    assert route.topic_for("z2m.lamp%201.cmd.a.b") == "zigbee2mqtt/lamp 1/set/a/b"
    assert route.topic_for("z2m.lamp.cmd") is None  # NATS's '>' needs a token
    assert route.topic_for("z2m.lamp.cfg.a") is None
    assert SubjectRoute(">", "bridge/#").topic_for("a.%.b") == "bridge/a//b"
    assert SubjectRoute("a.b", "$x/*").topic_for("a.b") == "$x/*"  # literal levels as written
    with raises("z2m.a%2Fb.cmd.x", "'/'"):
        route.topic_for("z2m.a%2Fb.cmd.x")
    with raises("z2m.*.cmd.x", "wildcards"):
        route.topic_for("z2m.*.cmd.x")


MISFITS = [
    (TopicRoute, "a/+/#", "x.>", "the wildcards * > in that order, it has >"),
    (TopicRoute, "a/+", "x.*.*", "it has * *"),
    (TopicRoute, "a/+/b/#", "x.>.*", "'>' must be the last token"),
    (TopicRoute, "a/#", "x.*", "it has *"),
    (TopicRoute, "a/b", "x.*", "(none) in that order"),
    (TopicRoute, "a/#", ">", "'a' itself"),
    (TopicRoute, "a/+", "x y.*", "whitespace"),
    (TopicRoute, "a/+", "x..*", "empty token"),
    (SubjectRoute, "a.*.>", "x/#", "the wildcards + # in that order, it has #"),
    (SubjectRoute, "a.>", "#/x", "'#' must be the whole last level"),
    (SubjectRoute, "a.*", "x/+/+", "it has + +"),
    (SubjectRoute, "a.*", "x/a+", "'+' must be a whole level"),
    (SubjectRoute, "a.b", "x/#", "(none) in that order"),
]


@pytest.mark.parametrize("route, source, template, why", MISFITS,
                         ids=[f"{s} -> {t}" for _, s, t, _ in MISFITS])
def test_mismatched_templates_name_both_strings(route: type[TopicRoute | SubjectRoute],
                                                source: str, template: str, why: str) -> None:
    with raises(template, repr(source), why):
        route(source, template)


# -- overlaps and lint ---------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, example", [
    ("a/+", "+/b", "a/b"), ("a/#", "a", "a"), ("#", "#", "x"), ("a/b", "a/c", None),
    ("#", "$SYS/#", None), ("+/x", "$SYS/x", None), ("$SYS/#", "$SYS/+", "$SYS/x"),
    ("a/+/#", "a", None), ("/#", "+/x", "/x"), ("+/+", "#", "x/x"), ("/#", "#", "/x"),
    ("/#", "+", None), ("/#", "/+", "/x"),
])
def test_common_topic(a: str, b: str, example: str | None) -> None:
    assert common_topic(a, b) == example
    assert common_topic(b, a) == example


@pytest.mark.parametrize("a, b, example", [
    ("a.*", "*.b", "a.b"), ("a.>", "a", None), (">", ">", "x"), ("a.>", "*.*.c", "a.x.c"),
    ("a.b", "a.c", None), ("*", "a.>", None), ("a.*.>", "a.b", None), ("%", "*", "%"),
])
def test_common_subject(a: str, b: str, example: str | None) -> None:
    assert common_subject(a, b) == example
    assert common_subject(b, a) == example


def test_lint_is_quiet_about_rules_that_cannot_meet() -> None:
    assert lint_rules([("sensors/#", None), ("meters/+/kwh", "energy.*")],
                      [("cmd.>", "devices/cmd/#"), ("ota.*", "")]) == []


def test_lint_names_rules_that_can_never_map() -> None:
    problems = lint_rules([("a/#/b", None), ("a/+", "x.>")], [("a.>.b", "x/#")])
    assert len(problems) == 3
    assert problems[0].startswith("import 'a/#/b' -> None can never map")
    assert problems[1].startswith("import 'a/+' -> 'x.>' can never map")
    assert problems[2].startswith("export 'a.>.b' -> 'x/#' can never map")


def test_lint_names_overlapping_imports_and_exports() -> None:
    (imports,) = lint_rules([("a/+", "x.*"), ("$b/#", None), ("+/c", "y.*")], [])
    assert "imports 'a/+' -> 'x.*' and '+/c' -> 'y.*'" in imports and "'a/c'" in imports
    assert "NATS twice" in imports
    (exports,) = lint_rules([], [("cmd.*", None), ("cmd.ota", "ota"), ("x.>", "y/#")])
    assert "exports 'cmd.*' -> 'cmd/+' and 'cmd.ota' -> 'ota'" in exports
    assert "MQTT twice" in exports
    assert len(lint_rules([("$SYS/#", None), ("#", None)], [])) == 0


def test_lint_names_loop_risks() -> None:
    (loop,) = lint_rules([("cmd/#", "cmd.>")], [("cmd.*", "cmd/+")])
    assert loop.startswith("loop risk: import 'cmd/#' -> 'cmd.>' publishes subjects export "
                           "'cmd.*' -> 'cmd/+' takes")
    assert "'cmd.x'" in loop and "'cmd/x'" in loop and "echo" in loop
    # One direction only is no loop: subjects meet, topics do not (and the other way round).
    assert lint_rules([("in/#", "cmd.>")], [("cmd.*", "out/+")]) == []
    assert lint_rules([("in/#", "in.>")], [("cmd.*", "in/+")]) == []
    # '#' may stand for no level: 'a/#' -> 'x.>' also publishes 'x'.
    assert len(lint_rules([("a/#", "x.>")], [("x", "a")])) == 1
    assert lint_rules([("#", "x.>")], [("x", "a")]) == []
    # An export's '#' gets at least one level, and the '$' rule is the import filter's.
    assert lint_rules([("a", "x.y")], [("x.>", "a/#")]) == []
    assert len(lint_rules([("$SYS/x", "x.y")], [("x.*", "+/x")])) == 1
    assert lint_rules([("+/x", "x.*")], [("x.*", "$SYS/+")]) == []


def test_what_a_route_can_publish_meets_a_pattern_or_filter() -> None:
    assert TopicRoute("a/#", "x.>").common_subject("x") == "x"  # from the topic 'a'
    assert TopicRoute("#", "x.>").common_subject("x") is None
    assert TopicRoute("a/+", "x.*").common_subject("*.b") == "x.b"
    export = SubjectRoute("x.*", "+/x")
    assert export.common_topic("$SYS/x") == "$SYS/x"  # from the subject '%24SYS.x'
    assert common_topic("+/x", "$SYS/x") is None  # while two filters do not meet there
    assert SubjectRoute("x.>", "a/#").common_topic("a") is None  # '>' takes a token
    assert SubjectRoute("x.*", "$SYS/+").common_topic("+/+") is None
    with raises("a/#/b", "'#'"):
        export.common_topic("a/#/b")
    with raises("a..b", "empty token"):
        TopicRoute("#").common_subject("a..b")


# -- properties ----------------------------------------------------------------------------------

SPECIAL = list("/.%$ *>\t\r\n\x01\x0b\x0c\x1f\x7f-_:@aZ09") + ["é", "✓", "\u0085", "\U0001f600"]
topic_chars = st.one_of(st.sampled_from(SPECIAL),
                        st.characters(exclude_characters="+#\x00", exclude_categories=["Cs"]))
topics = st.text(topic_chars, min_size=1)
level_texts = st.text(st.one_of(st.sampled_from([c for c in SPECIAL if c != "/"]),
                                st.characters(exclude_characters="/+#\x00",
                                              exclude_categories=["Cs"])), max_size=6)
# Few distinct levels, so that random filters and topics often meet.
small_levels = st.sampled_from(["a", "b", "", "$x", "%", "*", ">", ".", "a b"])


@st.composite
def filters(draw: st.DrawFn, levels: st.SearchStrategy[str] = small_levels) -> str:
    parts = draw(st.lists(st.one_of(levels, st.just("+")), max_size=4))
    if draw(st.booleans()) or not parts:
        parts.append("#")
    return "/".join(parts) or "a"


@st.composite
def topics_of(draw: st.DrawFn, topic_filter: str,
              levels: st.SearchStrategy[str] = small_levels) -> str:
    """A topic ``topic_filter`` matches, the '$' rule aside."""
    out: list[str] = []
    for level in topic_filter.split("/"):
        if level == "+":
            out.append(draw(levels))
        elif level == "#":
            out += draw(st.lists(levels, max_size=3))
        else:
            out.append(level)
    # One empty level would be the empty string, no topic: let every wildcard take an 'x'.
    return "/".join(out) or topic_filter.replace("+", "x").replace("#", "x")


@given(topics)
def test_any_topic_round_trips_through_a_valid_subject(topic: str) -> None:
    subject = topic_to_subject(topic)
    assert is_valid_literal_subject(subject.encode()) and is_valid_subject(subject.encode())
    assert subject_to_topic(subject) == topic
    assert topic_to_subject(subject_to_topic(subject)) == subject


@given(st.lists(st.sampled_from(list("%.aZ2E5$/+# *>\x00") + ["%2", "%25", "%2A", "%2F"]),
                min_size=1).map("".join))
def test_any_subject_with_a_topic_maps_back_to_the_same_topic(subject: str) -> None:
    try:
        topic = subject_to_topic(subject)
    except MappingError:
        return
    assert subject_to_topic(topic_to_subject(topic)) == topic


@given(filters(level_texts))
def test_any_filter_round_trips_through_a_valid_pattern(topic_filter: str) -> None:
    pattern = filter_to_subject(topic_filter)
    assert is_valid_subject(pattern.encode())
    assert subject_to_filter(pattern) == topic_filter
    assert SubjectRoute(pattern).topic_template == topic_filter


def starts_with_dollar_rule(topic_filter: str, topic: str) -> bool:
    return topic_filter.split("/")[0] in ("+", "#") and topic.startswith("$")


@given(st.data())
def test_topic_matching_agrees_with_nats_matching(data: st.DataObject) -> None:
    topic_filter = data.draw(filters())
    topic = data.draw(st.one_of(topics_of(topic_filter), topics_of(data.draw(filters()))))
    subject = topic_to_subject(topic).encode()
    nats = matches(filter_to_subject(topic_filter).encode(), subject)
    if topic_filter.endswith("/#") and topic_filter[:-2]:  # MQTT: 'a/#' matches 'a' too
        nats = nats or matches(filter_to_subject(topic_filter[:-2]).encode(), subject)
    assert nats == any(matches(p.encode(), subject) for p in filter_to_subjects(topic_filter))
    expected = nats and not starts_with_dollar_rule(topic_filter, topic)
    assert topic_matches(topic_filter, topic) is expected


@st.composite
def templates_for(draw: st.DrawFn, topic_filter: str) -> str:
    """A subject template with the filter's wildcards in order and other literal tokens."""
    literals = st.lists(st.sampled_from(["x", "z2m", "%", "%2E", "a%zz", "é", "$y"]), max_size=2)
    out: list[str] = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            out += draw(literals) + [{"+": "*", "#": ">"}[level]]
    if not topic_filter.endswith("#"):
        out += draw(literals)
    if out in ([], [">"]) and topic_filter != "#":
        out.insert(0, "x")
    return ".".join(out)


@given(st.data())
def test_routes_round_trip_with_mirrored_templates(data: st.DataObject) -> None:
    topic_filter = data.draw(filters())
    template = data.draw(templates_for(topic_filter))
    topic = data.draw(topics_of(topic_filter))
    imp, exp = TopicRoute(topic_filter, template), SubjectRoute(template, topic_filter)
    plain_imp, plain_exp = TopicRoute(topic_filter), SubjectRoute(filter_to_subject(topic_filter))
    subject = imp.subject_for(topic)
    if starts_with_dollar_rule(topic_filter, topic):
        assert subject is None and plain_imp.subject_for(topic) is None
        return
    assert subject is not None and is_valid_literal_subject(subject.encode())
    assert plain_imp.subject_for(topic) == topic_to_subject(topic)
    # NATS's '>' needs a token, so '#' standing for no level does not come back.
    hash_took_nothing = (topic_filter.endswith("#")
                         and len(topic.split("/")) < len(topic_filter.split("/")))
    expected = None if hash_took_nothing else topic
    assert exp.topic_for(subject) == expected
    assert plain_exp.topic_for(topic_to_subject(topic)) == expected


@given(st.data())
def test_common_topic_finds_a_shared_topic_exactly_when_there_is_one(data: st.DataObject) -> None:
    a, b = data.draw(filters()), data.draw(filters())
    topic = data.draw(st.one_of(topics_of(a), topics_of(b)))
    example = common_topic(a, b)
    if example is not None:
        assert topic_matches(a, example) and topic_matches(b, example)
    if topic_matches(a, topic) and topic_matches(b, topic):
        assert example is not None


small_tokens = st.sampled_from(["a", "b", "x", "%", "%2A"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.one_of(small_tokens, st.just("*")), max_size=4))
    if draw(st.booleans()) or not tokens:
        tokens.append(">")
    return ".".join(tokens)


@given(patterns(), patterns(), st.lists(small_tokens, min_size=1, max_size=6))
def test_common_subject_finds_a_shared_subject_exactly_when_there_is_one(
        a: str, b: str, tokens: list[str]) -> None:
    example = common_subject(a, b)
    if example is not None:
        assert matches(a.encode(), example.encode()) and matches(b.encode(), example.encode())
    subject = ".".join(tokens).encode()
    if matches(a.encode(), subject) and matches(b.encode(), subject):
        assert example is not None


@given(st.data())
def test_lint_reports_every_loop_the_rules_can_make(data: st.DataObject) -> None:
    topic_filter = data.draw(filters())
    imp = TopicRoute(topic_filter, data.draw(templates_for(topic_filter)))
    pattern = data.draw(patterns())
    assume(pattern != "%")  # the one pattern here with no filter: it is the empty string
    exp = SubjectRoute(pattern)
    subject = imp.subject_for(data.draw(topics_of(topic_filter)))
    try:
        back = None if subject is None else exp.topic_for(subject)
    except MappingError:
        back = None
    if back is not None and topic_matches(topic_filter, back):
        problems = lint_rules([(imp.topic_filter, imp.subject_template)],
                              [(exp.subject_pattern, None)])
        assert any(p.startswith("loop risk") for p in problems)


# -- layering ------------------------------------------------------------------------------------

def test_the_mapping_does_no_io() -> None:
    from test_architecture import IO_MODULES, LEAF, hits, imports_of

    assert hits(imports_of(LEAF / "bridges" / "mqtt_topics.py"), IO_MODULES) == set()
