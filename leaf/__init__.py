"""leaf: a small NATS-compatible broker for edge gateways."""

__version__ = "0.1.0"
# The NATS server version advertised to clients; clients gate features on it.
NATS_COMPAT_VERSION = "2.12.0"
