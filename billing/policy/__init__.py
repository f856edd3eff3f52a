"""Cost-control policy rules: pure functions of numbers, settings, state and the clock.

No Django models here; ``billing.services`` loads accounts, calls ``decide`` and acts on
the ``Decision``.
"""

from billing.policy.calendar import (
    NoTripWindows,
    active_windows,
    holiday_name,
    is_statutory_holiday,
    next_trip_allowed_at,
)
from billing.policy.rules import ACTIONS, STATES, Decision, PolicySettings, PolicyState, decide

__all__ = [
    "ACTIONS",
    "STATES",
    "Decision",
    "NoTripWindows",
    "PolicySettings",
    "PolicyState",
    "active_windows",
    "decide",
    "holiday_name",
    "is_statutory_holiday",
    "next_trip_allowed_at",
]
