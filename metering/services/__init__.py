"""Writes of the metering app (CONVENTIONS.md): one module per domain.

``readings`` is the one path for daily readings; import from the module that owns the
service, e.g. ``from metering.services.readings import readings_ingest``.
"""

from metering.services.readings import readings_ingest  # noqa: F401
