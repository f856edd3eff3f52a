"""The audit trail.

Changes to tracked models are recorded by PostgreSQL triggers (django-pghistory), so
nothing that writes to the database — a service, the admin, a shell, raw SQL — can
change a tracked row without leaving an event. Event rows are append-only: pghistory
installs triggers that refuse UPDATE and DELETE on them (``PGHISTORY_APPEND_ONLY``).

Each event carries the context of the request or task that caused it: the user, their
role and org unit (the service hall for counter staff), the URL, and for cross-region
business a ``cross_region`` flag with the customer's own unit.
"""

import contextlib

import pghistory
from django.db import connection


def trackers():
    """Insert, update and delete snapshots; before/after is the diff of consecutive ones."""
    return (
        pghistory.InsertEvent(),
        pghistory.UpdateEvent(),
        pghistory.DeleteEvent(),
    )


def audit_context(**metadata):
    """Group the changes made inside under one audit context carrying ``metadata``.

    On PostgreSQL this is ``pghistory.context``; the embedded SQLite mode has no triggers
    to read it (and pghistory's statement injection does not work there), so it is a no-op.
    """
    if connection.vendor == "postgresql":
        return pghistory.context(**metadata)
    return contextlib.nullcontext()


def actor_context(user) -> dict:
    """The who/where of an actor, as stored in every event's context."""
    profile = getattr(user, "staff_profile", None) if user and user.is_authenticated else None
    data = {"user": user.pk if user and user.is_authenticated else None}
    if user and user.is_authenticated:
        data["username"] = user.get_username()
    if profile is not None:
        data.update(
            role=profile.role,
            org_unit=profile.org_unit.code,
            org_unit_name=profile.org_unit.name,
        )
    return data
