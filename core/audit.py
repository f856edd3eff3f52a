"""The audit trail.

Changes to tracked models are recorded by PostgreSQL triggers (django-pghistory), so
nothing that writes to the database — a service, the admin, a shell, raw SQL — can
change a tracked row without leaving an event. Event rows are append-only: pghistory
installs triggers that refuse UPDATE and DELETE on them (``PGHISTORY_APPEND_ONLY``).

Each event carries the context of the request or task that caused it: the user, their
role and org unit (the service hall for counter staff), the URL, and for cross-region
business a ``cross_region`` flag with the customer's own unit.
"""

import pghistory


def trackers():
    """Insert, update and delete snapshots; before/after is the diff of consecutive ones."""
    return (
        pghistory.InsertEvent(),
        pghistory.UpdateEvent(),
        pghistory.DeleteEvent(),
    )


def add_context(**metadata):
    """Attach metadata to the current audit context, if one is open (no-op otherwise)."""
    pghistory.context(**metadata)


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
