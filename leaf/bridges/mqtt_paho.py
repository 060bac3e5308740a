"""The few paho-mqtt internals the MQTT bridge relies on, in one place.

paho offers no public count of what it holds for the broker, and no way to set
its in-flight window while connected; both matter on a gateway (a bounded
queue towards a stalled broker, a broker's Receive Maximum honoured after a
reconnect). Each function degrades to doing nothing on a paho without them.
"""

from __future__ import annotations

import paho.mqtt.client as paho


def held(client: paho.Client) -> int:
    """Messages paho holds that are not on the wire yet: packets not yet written,
    plus QoS 1/2 messages waiting for room in the in-flight window (those in flight
    are bounded by the window)."""
    waiting = len(getattr(client, "_out_messages", ())) - getattr(client, "_inflight_messages", 0)
    return len(getattr(client, "_out_packet", ())) + max(0, waiting)


def fit_window(client: paho.Client, window: int) -> None:
    """Keep paho within ``window`` QoS 1/2 messages in flight on this connection: the
    broker's Receive Maximum (MQTT 5) or ours. Called from on_connect, before paho's
    resend loop on a new connection, which would otherwise send every unacknowledged
    export at once."""
    try:
        client._max_inflight_messages = window  # noqa: SLF001
        sending = 0
        for m in client._out_messages.values():  # noqa: SLF001  (in publish order)
            if m.qos > 0 and m.state == paho.mqtt_ms_publish:
                sending += 1
                if sending > window:
                    m.state = paho.mqtt_ms_queued  # sent as PUBACKs free the window
    except AttributeError:  # another paho: it keeps its own window
        pass
