"""``leaf mqtt map|check``: see how topics become subjects, lint a config's rules.

    leaf mqtt map 'zigbee2mqtt/living room/lamp'     # the subject it becomes
    leaf mqtt map --subject 'cmd.lamp%201.set'       # the topic a subject becomes
    leaf mqtt map -c leaf.toml 'zigbee2mqtt/lamp/set'  # through the config's rules
    leaf mqtt check leaf.toml                        # overlaps, loops, unmappable rules

Exit status: 0 fine, 1 a topic no rule maps / lint problems, 2 bad input or config.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from leaf.bridges import mqtt_topics as topics
from leaf.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``leaf mqtt`` and its subcommands, under the main parser's ``sub``."""
    p = sub.add_parser("mqtt", help="MQTT bridge: show topic <-> subject mappings, lint rules")
    cmds = p.add_subparsers(dest="mqtt_command", required=True, metavar="COMMAND")
    m = cmds.add_parser("map", help="the subject a topic (or filter) becomes, or the reverse")
    m.add_argument("name", metavar="TOPIC",
                   help="an MQTT topic or filter (with --subject: a NATS subject or pattern)")
    m.add_argument("--subject", action="store_true",
                   help="NAME is a NATS subject: show the MQTT topic it becomes")
    m.add_argument("-c", "--config", metavar="CONFIG",
                   help="map through this config's [[mqtt]] import (or export) rules")
    c = cmds.add_parser("check", help="lint the [[mqtt]] rules of a config")
    c.add_argument("config", metavar="CONFIG", help="leaf TOML configuration")


def run(args: argparse.Namespace) -> int:
    if args.mqtt_command == "map":
        return _map(args)
    return _check(args.config)


def _map(args: argparse.Namespace) -> int:
    name: str = args.name
    wild = any(w in name.split("." if args.subject else "/") for w in
               (("*", ">") if args.subject else ("+", "#")))
    try:
        if args.config:
            return _map_by_rules(name, args.subject, _bridges(args.config))
        if args.subject:
            print(topics.subject_to_filter(name) if wild else topics.subject_to_topic(name))
        else:
            print(topics.filter_to_subject(name) if wild else topics.topic_to_subject(name))
    except topics.MappingError as exc:
        print(f"leaf mqtt map: {exc}", file=sys.stderr)
        return 2
    return 0


def _map_by_rules(name: str, is_subject: bool, bridges: tuple[Any, ...]) -> int:
    """Every rule of every bridge that takes ``name``, and what it makes of it."""
    hits = 0
    for b in bridges:
        rules = b.exports if is_subject else b.imports
        kind = "export" if is_subject else "import"
        for i, rule in enumerate(rules):
            if is_subject:
                out = topics.SubjectRoute(rule.subject, rule.topic or None).topic_for(name)
            else:
                out = topics.TopicRoute(rule.topic, rule.subject or None).subject_for(name)
            if out is not None:
                hits += 1
                print(f"{out}\t({b.label}.{kind}[{i}], qos {rule.qos})")
                if not is_subject:
                    break  # the bridge takes the first import rule that matches
    if not hits:
        print(f"no {'export' if is_subject else 'import'} rule takes {name!r}")
        return 1
    return 0


def _check(path: str) -> int:
    bridges = _bridges(path)
    problems = 0
    for b in bridges:
        found = topics.lint_rules([(r.topic, r.subject or None) for r in b.imports],
                                  [(r.subject, r.topic or None) for r in b.exports])
        for line in found:
            print(f"{b.label}: {line}")
        problems += len(found)
    rules = sum(len(b.imports) + len(b.exports) for b in bridges)
    if problems:
        print(f"{problems} problem(s) in {rules} rule(s) of {len(bridges)} bridge(s)")
        return 1
    print(f"ok: {rules} rule(s) in {len(bridges)} bridge(s)")
    return 0


def _bridges(path: str) -> tuple[Any, ...]:
    from leaf import config

    cfg = config.load(path)
    if not cfg.mqtt:
        raise ConfigError(f"{path}: no [[mqtt]] table")
    return cfg.mqtt
