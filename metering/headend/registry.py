"""Which adapter speaks a meter's protocol: ``get_adapter(meter.protocol)``.

One adapter instance per protocol and process. The adapter keeps its connection pools per
event loop (``asyncio.run`` makes a new loop per call), so sharing the instance is safe; a
forked child (Celery prefork) starts with no instances of its own.

Settings (all optional):

``METERING_CONNECTIONS_PER_ENDPOINT``
    at most this many TCP connections to one endpoint. Defaults to
    ``METERING_READ_CONCURRENCY`` (the fleet simulator and concentrators that accept many
    sessions); set 1 for DTUs that take a single TCP session.
``METERING_DLT645_PASSWORD``
    remote-control password PA P0 P1 P2 as 8 hex digits (default ``02000000``).
``METERING_DLT645_OPERATOR``
    operator code C0..C3 as 8 hex digits (default ``00000000``).
"""

from __future__ import annotations

import os

from django.conf import settings

from metering.headend.base import ProtocolAdapter
from metering.headend.client import Dlt645Adapter

_instances: dict[str, ProtocolAdapter] = {}


def _dlt645() -> Dlt645Adapter:
    per_endpoint = getattr(settings, "METERING_CONNECTIONS_PER_ENDPOINT", None) or getattr(
        settings, "METERING_READ_CONCURRENCY", 8
    )
    return Dlt645Adapter(
        max_connections_per_endpoint=int(per_endpoint),
        password=bytes.fromhex(getattr(settings, "METERING_DLT645_PASSWORD", "02000000")),
        operator_code=bytes.fromhex(getattr(settings, "METERING_DLT645_OPERATOR", "00000000")),
        meter_timezone=settings.TIME_ZONE,
    )


FACTORIES = {"dlt645-2007": _dlt645}


def get_adapter(protocol: str) -> ProtocolAdapter:
    """The shared adapter for ``protocol`` (e.g. ``"dlt645-2007"``); ValueError if unknown."""
    adapter = _instances.get(protocol)
    if adapter is None:
        try:
            factory = FACTORIES[protocol]
        except KeyError:
            raise ValueError(
                f"no head-end adapter for protocol {protocol!r}; known: {', '.join(FACTORIES)}"
            ) from None
        adapter = _instances[protocol] = factory()
    return adapter


def reset_adapters() -> None:
    """Forget the shared instances (after a fork, or when a test changes the settings)."""
    _instances.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_adapters)
