"""Bridges: other transports (serial sensors, MQTT) onto leaf's subjects."""
