"""In-process routing: subscriptions, queue groups and fan-out.

The hub is pure: it appends wire-ready ``MSG``/``HMSG`` frames to each
receiver's ``out`` buffer and lists the receivers that have something to
send in ``dirty``; the driver that owns the sockets writes them out (one
write per receiver per received chunk). Internal subscribers (bridges, the
stream) get a callback instead of bytes.

Routing a subject is done once and cached: the cache maps a subject to the
matching subscriptions together with their pre-built ``MSG <subject> <sid>``
prefixes, so delivering costs two buffer appends per receiver.

Interest of the upstream hub (its ``LS+``) lives here too, as *remote*
subscriptions owned by the uplink: their prefix is ``LMSG <subject>``, one
frame per message however many of them match, and a hub queue group is
only a fallback when no local member of that group takes the message, as
nats-server's leaf nodes do.
"""

from __future__ import annotations

from random import random
from typing import Callable, Iterable, Protocol

from leaf.subjects import SubjectIndex, is_literal

CRLF = b"\r\n"
ROUTE_CACHE_SIZE = 65536
INBOX_CACHE_SIZE = 4096
CACHED_SUBJECT_MAX = 256
# From this payload size on, batches go out by reference (writev) instead of
# being copied into the receiver's buffer.
BIG_PAYLOAD = 512
# Routes wider than this take the careful path, which watches queue sizes.
FAN_OUT_GUARD = 32

# (subject, reply, hdr_len, payload) -> None; hdr_len < 0 means no headers.
Callback = Callable[[bytes, bytes, int, bytes], None]


class Receiver(Protocol):
    """What the hub needs from a subscriber's owner (a client connection)."""

    out: bytearray
    iov: list[bytes]  # queued before ``out``; written first
    queued: bool
    echo: bool
    headers: bool
    out_bytes: int
    subs: dict[bytes, "Subscription"]

    def retired(self, sub: "Subscription") -> None:
        """``sub`` left ``subs`` after reaching its limit (keep its counts)."""


class Subscription:
    """One SUB: a subject (maybe wildcard), an optional queue group, its owner."""

    __slots__ = ("subject", "queue", "sid", "owner", "max_msgs", "delivered", "callback", "denied",
                 "remote", "max_size", "local_only")

    def __init__(
        self,
        subject: bytes,
        sid: bytes,
        owner: Receiver | None,
        queue: bytes = b"",
        callback: Callback | None = None,
        remote: bool = False,
        local_only: bool = False,
    ) -> None:
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.owner = owner
        self.max_msgs = 0
        self.delivered = 0
        self.callback = callback
        # Subjects this subscriber may not receive even though the pattern matches.
        self.denied: Callable[[bytes], bool] | None = None
        # Interest of the upstream hub (an LS+), delivered as LMSG/HMSG frames.
        self.remote = remote
        self.max_size = 0  # larger payloads are not delivered (0: no limit)
        # Only for local publishes: not announced to the hub, and messages
        # from the hub never reach it (the stream's ingest).
        self.local_only = local_only


# (subscription, owner, MSG prefix, HMSG prefix, needs per-message care)
_Entry = tuple[Subscription, Receiver, bytes, bytes, bool]
# (plain entries, queue groups, uplink): a group is (local members, the hub's
# member or None); ``uplink`` is set only when a hub queue group matches, and
# then holds the hub's plain interest (or None) instead of ``plain``.
_Group = tuple[tuple[_Entry, ...], "_Entry | None"]
_Route = tuple[tuple[_Entry, ...], tuple[_Group, ...], "tuple[_Entry | None] | None"]
_NO_ROUTE: _Route = ((), (), None)
# (subscription, added): a local subscription came or went (see Hub.on_interest).
InterestHook = Callable[[Subscription, bool], None]


class Hub:
    """Subscriptions of one account and the fan-out of messages to them."""

    def __init__(
        self,
        on_dirty: Callable[[], None] | None = None,
        on_overflow: Callable[[Receiver], None] | None = None,
        max_pending: int = 64 * 1024 * 1024,
    ) -> None:
        self.index: SubjectIndex[Subscription] = SubjectIndex()
        self._routes: dict[bytes, _Route] = {}
        self._inbox_routes: dict[bytes, _Route] = {}
        self.dirty: list[Receiver] = []
        # on_dirty: schedule a flush (idempotent); on_overflow: a receiver's
        # queue passed max_pending in the middle of a wide fan-out.
        self._on_dirty = on_dirty
        self._on_overflow = on_overflow
        self.max_pending = max_pending
        self._expired: list[Subscription] = []  # reached their UNSUB max during a publish
        # Told of every local subscription added or removed: the uplink
        # announces local interest to the hub from it.
        self.on_interest: InterestHook | None = None
        # Told of a message too large for a subscription's max_size (the uplink counts them).
        self.on_oversize: Callable[[Receiver, int], None] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def add(self, sub: Subscription) -> None:
        self.index.add(sub)
        self._forget(sub.subject)
        if self.on_interest is not None and not sub.remote and not sub.local_only:
            self.on_interest(sub, True)

    def remove(self, sub: Subscription) -> None:
        if self.index.remove(sub):
            self._forget(sub.subject)
            if self.on_interest is not None and not sub.remote and not sub.local_only:
                self.on_interest(sub, False)

    def remove_all(self, subs: Iterable[Subscription]) -> None:
        for sub in list(subs):
            self.remove(sub)

    def _forget(self, subject: bytes) -> None:
        if is_literal(subject):
            self._routes.pop(subject, None)
            self._inbox_routes.pop(subject, None)
        else:
            self._routes.clear()
            self._inbox_routes.clear()

    @property
    def cached_routes(self) -> int:
        return len(self._routes)

    def forget_routes(self) -> None:
        """Routing inputs changed outside add/remove (a remote ``denied`` rule)."""
        self._routes.clear()
        self._inbox_routes.clear()

    def has_interest(self, subject: bytes) -> bool:
        plain, groups, uplink = self._route(subject)
        return bool(plain or groups or uplink)

    def _route(self, subject: bytes) -> _Route:
        route = self._routes.get(subject)
        if route is None:
            route = self._inbox_routes.get(subject)
        if route is not None:
            return route
        plain: list[_Entry] = []
        groups: dict[bytes, list[_Entry]] = {}
        remote_plain: _Entry | None = None
        remote_groups: dict[bytes, _Entry] = {}
        for sub in self.index.match(subject):
            if sub.denied is not None and sub.denied(subject):
                continue
            if sub.remote:  # one frame to the hub, however many of its LS+ match
                entry = (sub, sub.owner, b"LMSG " + subject, b"HMSG " + subject,
                         bool(sub.max_size))
                if sub.queue:
                    remote_groups.setdefault(sub.queue, entry)
                elif remote_plain is None:
                    remote_plain = entry
                continue
            entry = (sub, sub.owner, b"MSG " + subject + b" " + sub.sid,
                     b"HMSG " + subject + b" " + sub.sid,
                     bool(sub.max_msgs) or sub.callback is not None or sub.local_only)
            if sub.queue:
                groups.setdefault(sub.queue, []).append(entry)
            else:
                plain.append(entry)
        uplink: tuple[_Entry | None] | None = None
        if remote_groups:
            uplink = (remote_plain,)
        elif remote_plain is not None:
            plain.append(remote_plain)
        route = (tuple(plain), tuple((tuple(members), remote_groups.pop(queue, None))
                                     for queue, members in groups.items())
                 + tuple(((), e) for e in remote_groups.values()), uplink)
        if not route[0] and not route[1]:
            route = _NO_ROUTE
        if len(subject) <= CACHED_SUBJECT_MAX:  # bounds the cache in bytes too
            # Reply inboxes (most used once, for a PubAck or a response) get
            # a small cache of their own, so they never push the hot routes out.
            inbox = subject.startswith(b"_INBOX.")
            cache, limit = (self._inbox_routes, INBOX_CACHE_SIZE) if inbox else \
                (self._routes, ROUTE_CACHE_SIZE)
            if len(cache) >= limit:
                cache.clear()
            cache[subject] = route
        return route

    def publish(
        self,
        subject: bytes,
        reply: bytes,
        size: int,
        tail: bytes,
        hdr_len: int = -1,
        origin: object = None,
        queues: tuple[bytes, ...] | None = None,
    ) -> int:
        """Deliver one message to every matching subscriber; return how many got it.

        ``tail`` is the wire form after the subject, `` [reply] <size>\r\n
        <payload>\r\n`` (see ``encode.tail``), ``size`` the payload size;
        ``hdr_len`` >= 0 means the payload starts with a header block of that
        size and the tail carries both sizes. ``queues`` (for a message from
        the hub) names the only queue groups that may take it.
        """
        route = self._routes.get(subject)
        if route is None:
            route = self._route(subject)
        if route is _NO_ROUTE:
            return 0
        return self._fan_out(route, subject, reply, size, tail, hdr_len, origin, queues)

    def _fan_out(self, route: _Route, subject: bytes, reply: bytes, size: int, tail: bytes,
                 hdr_len: int, origin: object, queues: tuple[bytes, ...] | None = None) -> int:
        """One message to every plain subscriber and one member per queue group;
        a hub queue group gets it only when no local member did."""
        plain, groups, uplink = route
        n = 0
        for sub, rcv, prefix, hprefix, _ in plain:
            if rcv is origin and origin is not None and not rcv.echo:
                continue
            if self._deliver(sub, rcv, prefix, hprefix, subject, reply, size, tail, hdr_len,
                             queues is not None):
                n += 1
        hub_groups: list[Subscription] | None = None
        for group, fallback in groups:
            if queues is not None and (group[0] if group else fallback)[0].queue not in queues:
                continue
            count = len(group)
            first = int(random() * count)
            for i in range(count):
                sub, rcv, prefix, hprefix, _ = group[(first + i) % count]
                if rcv is origin and origin is not None and not rcv.echo:
                    continue
                if self._deliver(sub, rcv, prefix, hprefix, subject, reply, size, tail, hdr_len,
                                 queues is not None):
                    n += 1
                    break
            else:  # no local member took it: the hub's group, if any, is the fallback
                if fallback is not None and fallback[1] is not origin:
                    if hub_groups is None:
                        hub_groups = []
                    hub_groups.append(fallback[0])
        if uplink is not None and (hub_groups or uplink[0] is not None):
            if self._to_hub(uplink[0], hub_groups, subject, reply, size, tail, hdr_len, origin):
                n += 1
        if len(plain) > FAN_OUT_GUARD:
            self._guard(plain)
        self._drop_expired()
        return n

    def _to_hub(self, entry: _Entry | None, hub_groups: list[Subscription] | None,
                subject: bytes, reply: bytes, size: int, tail: bytes, hdr_len: int,
                origin: object) -> bool:
        """One LMSG/HMSG to the hub naming the hub queue groups that should take
        the message (``LMSG <subject> [+ <reply>|'|'] <queue>... <size>``)."""
        if not hub_groups:
            assert entry is not None
            sub, rcv, prefix, hprefix, _ = entry
            if rcv is origin:
                return False
            return self._deliver(sub, rcv, prefix, hprefix, subject, reply, size, tail, hdr_len)
        sub = hub_groups[0]
        rcv = sub.owner
        assert rcv is not None
        if sub.max_size and size > sub.max_size:
            if self.on_oversize is not None:
                self.on_oversize(rcv, size)
            return False
        names = b" ".join(s.queue for s in hub_groups)
        op = b"HMSG " if hdr_len >= 0 else b"LMSG "
        out = rcv.out
        if reply:
            out += op + subject + b" + " + reply + b" " + names
            out += tail[len(reply) + 1:]
        else:
            out += op + subject + b" | " + names
            out += tail
        sub.delivered += 1
        rcv.out_bytes += size
        if not rcv.queued:
            self.queue(rcv)
        return True

    def _guard(self, entries: tuple[_Entry, ...]) -> None:
        """After a wide fan-out: cut off receivers whose queue outgrew the limit
        before the rest of this read multiplies it further."""
        if self._on_overflow is None:
            return
        for rcv in {id(e[1]): e[1] for e in entries}.values():
            if len(rcv.out) > self.max_pending:
                self._on_overflow(rcv)

    def _drop_expired(self) -> None:
        if self._expired:
            for sub in self._expired:
                self.expire(sub)
            self._expired.clear()

    def publish_many(
        self, msgs: list[tuple[bytes, bytes, int, bytes]], origin: object = None,
        on_miss: Callable[[bytes, bytes], None] | None = None,
        queues: tuple[bytes, ...] | None = None,
    ) -> None:
        """``publish`` for consecutive messages without headers (see events.Pubs).

        ``on_miss(subject, reply)`` runs, in order, for each request that
        reached nobody (no-responders). This is the per-message hot path for
        mixed traffic, so the common delivery is inlined here.
        """
        routes = self._routes
        for subject, reply, size, tail in msgs:
            route = routes.get(subject)
            if route is None:
                route = self._route(subject)
            plain = route[0]
            n = 0
            if route[1] or len(plain) > FAN_OUT_GUARD:
                n = self._fan_out(route, subject, reply, size, tail, -1, origin, queues)
            else:
                for sub, rcv, prefix, hprefix, careful in plain:
                    if rcv is origin and origin is not None and not rcv.echo:
                        continue
                    if careful:
                        if self._deliver(sub, rcv, prefix, hprefix, subject, reply, size, tail,
                                         -1, queues is not None):
                            n += 1
                        continue
                    sub.delivered += 1
                    out = rcv.out
                    out += prefix
                    out += tail
                    rcv.out_bytes += size
                    n += 1
                    if not rcv.queued:
                        self.queue(rcv)
            if n == 0 and reply and on_miss is not None:
                on_miss(subject, reply)
        # Limits reached during the loop: _deliver already refused further
        # messages to those subscriptions, so dropping them now is exact.
        self._drop_expired()

    def publish_batch(
        self, subject: bytes, reply: bytes, size: int, tails: list[bytes], origin: object = None,
        on_miss: Callable[[bytes, bytes], None] | None = None,
        queues: tuple[bytes, ...] | None = None,
    ) -> None:
        """``publish`` for many messages on one subject (see events.PubBatch).

        A wire subscriber without a limit gets all of them in one join;
        anything that needs per-message decisions goes message by message.
        ``on_miss`` as in ``publish_many``, ``queues`` as in ``publish``.
        """
        route = self._routes.get(subject)
        if route is None:
            route = self._route(subject)
        plain, groups, _ = route
        if (groups and queues != ()) or len(plain) > FAN_OUT_GUARD or any(e[4] for e in plain):
            for tail in tails:
                if self.publish(subject, reply, size, tail, -1, origin, queues) == 0 and reply \
                        and on_miss is not None:
                    on_miss(subject, reply)
            return
        count = len(tails)
        delivered = False
        for sub, rcv, prefix, _, _ in plain:
            if rcv is origin and origin is not None and not rcv.echo:
                continue
            sub.delivered += count
            out = rcv.out
            if size < BIG_PAYLOAD:
                out += prefix
                out += prefix.join(tails)
            else:  # queue the payloads by reference: written with one writev, never copied
                pieces = [prefix] * (2 * count)
                pieces[1::2] = tails
                if out:  # what was queued before goes first
                    rcv.iov.append(out)
                    rcv.out = bytearray()
                rcv.iov += pieces
            rcv.out_bytes += size * count
            delivered = True
            if not rcv.queued:
                self.queue(rcv)
        if not delivered and reply and on_miss is not None:
            for _ in tails:
                on_miss(subject, reply)

    def _deliver(
        self,
        sub: Subscription,
        rcv: Receiver,
        prefix: bytes,
        hprefix: bytes,
        subject: bytes,
        reply: bytes,
        size: int,
        tail: bytes,
        hdr_len: int,
        from_hub: bool = False,
    ) -> bool:
        """Deliver to one subscriber the careful way: limits, callbacks, headers."""
        if sub.max_size and size > sub.max_size:
            if self.on_oversize is not None:
                self.on_oversize(rcv, size)
            return False
        if from_hub and sub.local_only:
            return False
        if sub.max_msgs:
            if sub.delivered >= sub.max_msgs:
                return False
            if sub.delivered + 1 >= sub.max_msgs:
                self._expired.append(sub)
        sub.delivered += 1
        if sub.callback is not None:
            sub.callback(subject, reply, hdr_len, tail[len(tail) - size - 2 : -2])
            return True
        out = rcv.out
        if hdr_len < 0 or rcv.headers:
            out += hprefix if hdr_len >= 0 else prefix
            out += tail
        else:  # a client without header support gets the body alone
            body = tail[len(tail) - size - 2 + hdr_len : -2]
            out += prefix
            out += (b" " + reply if reply else b"") + b" %d\r\n" % len(body)
            out += body
            out += CRLF
        rcv.out_bytes += size
        if not rcv.queued:
            self.queue(rcv)
        return True

    def limit(self, sub: Subscription, max_msgs: int) -> None:
        """UNSUB with a maximum: ``sub`` ends after ``max_msgs`` deliveries in all."""
        sub.max_msgs = max_msgs
        self._forget(sub.subject)  # cached routes know which subscriptions need care

    def expire(self, sub: Subscription) -> None:
        """A subscription reached its UNSUB max: drop it everywhere."""
        self.remove(sub)
        owner = sub.owner
        if owner is not None and owner.subs.get(sub.sid) is sub:
            del owner.subs[sub.sid]
            owner.retired(sub)

    def queue(self, rcv: Receiver) -> None:
        """``rcv`` has output to write: list it, and wake the driver's flush."""
        rcv.queued = True
        self.dirty.append(rcv)
        if self._on_dirty is not None:
            self._on_dirty()

    def take_dirty(self) -> list[Receiver]:
        dirty = self.dirty
        self.dirty = []
        return dirty
