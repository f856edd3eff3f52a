"""The cost-control decision rules (DESIGN.md flows 2-3 and §5), as one pure function.

``decide`` looks at one account's numbers, its policy settings, where it stands (normal,
warned, tripped) and the clock, and says what should happen now. It reads no database and
sends nothing: the caller (billing's policy service) loads the account, calls ``decide``,
records the ``Decision`` with its ``numbers``, updates the account's ``PolicyState`` and
enqueues notifications and remote commands.

Amounts
-------
``available = balance + credit_allowance``. Every comparison uses the exact Decimals given;
``Decision.numbers`` records them unrounded, as strings.

The rules, in the order they are applied
----------------------------------------
1. **Tripped.** ``available > close_threshold`` → ``close``, at any hour, on holidays,
   inside declared events and whatever the protection flag (a no-trip window never stops
   power coming back). Otherwise ``none``: the account stays tripped until a payment.
2. **Below the trip threshold** (``available < trip_threshold``):

   a. the configured warning (``required_warning`` 1 or 2) has not been sent in this
      episode → ``warn1`` / ``warn2`` (that level) instead of a trip, also inside a no-trip
      window and for a protected customer: a warning is a message, not a relay operation,
      and sending it is what starts the grace period. ``blocked_by`` lists
      ``warning_required`` and any other block that applies. A level-2 warning also
      satisfies a requirement of level 1.
   b. the customer is protected (保电) → ``trip_withheld`` (reason ``protected``);
   c. ``now`` is inside a no-trip window: night hours, a statutory holiday (see
      ``billing.policy.calendar``: festivals of the official schedule, not ordinary
      weekends), a declared event → ``trip_withheld`` (reason ``no_trip_window``);
   d. the grace period since the required warning has not elapsed → ``trip_withheld``
      (reason ``grace_period``);
   e. otherwise ``trip``.

   For b-d ``blocked_by`` lists *every* block that applies (``protected``, ``event``,
   ``holiday``, ``night``, ``grace_period``), so the record says all the reasons.
3. **Not tripped, at or above the trip threshold** (the warning ladder):
   ``available <= warning2_threshold`` and state is not ``warning2`` → ``warn2``;
   ``available <= warning1_threshold`` and state is ``normal`` → ``warn1``;
   state ``warning1``/``warning2`` and ``available > warning1_threshold`` → ``recover``;
   otherwise ``none``.

Boundaries (one convention throughout): a threshold is *reached* for warnings when
``available <= threshold``; a trip needs ``available < trip_threshold`` (exactly at the
threshold is not a trip); a close needs ``available > close_threshold`` (exactly at it is
not enough); a recovery needs ``available > warning1_threshold``.

Which warnings count: only those that belong to the current episode, as the state says.
In state ``normal`` no warning counts, whatever timestamps remain; in ``warning1`` the
level-1 warning; in ``warning2`` both (level 1 only if it was sent). The caller clears
the timestamps when the account recovers or is closed. The grace period runs from the
warning that satisfied the requirement (level 1: the level-1 warning, or the level-2 one
if no level-1 warning was sent; level 2: the level-2 warning). With
``required_warning = 0`` no warning and no grace period is needed before a trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.utils.translation import gettext as _

from billing.policy.calendar import DEFAULT_TZ, NoTripWindows, active_windows
from core.money import to_decimal

STATES = ("normal", "warning1", "warning2", "tripped")
ACTIONS = ("none", "warn1", "warn2", "trip", "close", "recover", "trip_withheld")

PROTECTED = "protected"
GRACE_PERIOD = "grace_period"
WARNING_REQUIRED = "warning_required"
NO_TRIP_WINDOW = "no_trip_window"


@dataclass(frozen=True)
class PolicySettings:
    """One account's cost-control thresholds (yuan of available balance)."""

    warning1_threshold: Decimal
    warning2_threshold: Decimal
    trip_threshold: Decimal
    close_threshold: Decimal
    required_warning: int = 1
    grace_period: timedelta = timedelta(hours=24)

    def __post_init__(self):
        for name in ("warning1_threshold", "warning2_threshold", "trip_threshold", "close_threshold"):
            object.__setattr__(self, name, to_decimal(getattr(self, name)))
        if self.required_warning not in (0, 1, 2):
            raise ValueError(f"required_warning must be 0, 1 or 2, not {self.required_warning!r}")
        if not isinstance(self.grace_period, timedelta) or self.grace_period < timedelta(0):
            raise ValueError("grace_period must be a timedelta of zero or more")
        if not self.trip_threshold < self.close_threshold:
            raise ValueError(
                f"the trip threshold ({self.trip_threshold}) must be below the close threshold "
                f"({self.close_threshold}), or a close could be followed at once by another trip"
            )
        if not self.warning2_threshold <= self.warning1_threshold:
            raise ValueError(
                f"the level-2 warning threshold ({self.warning2_threshold}) must not be above the "
                f"level-1 threshold ({self.warning1_threshold}): level 2 is the more urgent warning"
            )
        if not self.trip_threshold <= self.warning2_threshold:
            raise ValueError(
                f"the trip threshold ({self.trip_threshold}) must not be above the level-2 warning "
                f"threshold ({self.warning2_threshold}): warnings come before a trip"
            )


@dataclass(frozen=True)
class PolicyState:
    """Where one account stands in the cost-control cycle, and since when."""

    state: str = "normal"
    warning1_at: datetime | None = None
    warning2_at: datetime | None = None
    tripped_at: datetime | None = None
    protected: bool = False

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {self.state!r}")


@dataclass(frozen=True)
class Decision:
    """What to do now, why (``reason`` code and an English ``message`` the caller may
    translate), what withheld a trip (``blocked_by`` codes), and the numbers that led to it
    (strings, unrounded)."""

    action: str
    reason: str
    message: str
    blocked_by: tuple[str, ...] = ()
    numbers: dict[str, str] = field(default_factory=dict)


def decide(
    *,
    balance: Decimal,
    credit_allowance: Decimal,
    settings: PolicySettings,
    state: PolicyState,
    now: datetime,
    windows: NoTripWindows,
    tz: str = DEFAULT_TZ,
) -> Decision:
    """Apply the rules of the module docstring to one account at ``now`` (aware)."""
    balance = to_decimal(balance)
    credit_allowance = to_decimal(credit_allowance)
    if credit_allowance < 0:
        raise ValueError("credit_allowance must not be negative")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    available = balance + credit_allowance
    numbers = {
        "balance": str(balance),
        "credit_allowance": str(credit_allowance),
        "available_balance": str(available),
        "warning1_threshold": str(settings.warning1_threshold),
        "warning2_threshold": str(settings.warning2_threshold),
        "trip_threshold": str(settings.trip_threshold),
        "close_threshold": str(settings.close_threshold),
    }

    fig = {
        "available": available,
        "close": settings.close_threshold,
        "trip": settings.trip_threshold,
        "w1": settings.warning1_threshold,
        "w2": settings.warning2_threshold,
    }

    def result(action, reason, message, blocked_by=()):
        return Decision(
            action=action, reason=reason, message=message, blocked_by=tuple(blocked_by), numbers=numbers
        )

    # 1. Tripped: only a close can follow, and nothing stops it.
    if state.state == "tripped":
        if available > settings.close_threshold:
            return result(
                "close",
                "above_close_threshold",
                _(
                    "Available balance %(available)s yuan is above the close threshold %(close)s yuan: "
                    "restore supply."
                )
                % fig,
            )
        return result(
            "none",
            "tripped_below_close_threshold",
            _(
                "Supply stays cut off: available balance %(available)s yuan is not above the close "
                "threshold %(close)s yuan."
            )
            % fig,
        )

    # 2. Below the trip threshold.
    if available < settings.trip_threshold:
        windows_now = active_windows(now, windows, tz)
        window_codes = [code for code, _detail in windows_now]
        below = _("Available balance %(available)s yuan is below the trip threshold %(trip)s yuan") % fig

        warned_at = _required_warning_at(settings.required_warning, state)
        if settings.required_warning and warned_at is None:
            level = settings.required_warning
            other_blocks = ([PROTECTED] if state.protected else []) + window_codes
            return result(
                f"warn{level}",
                WARNING_REQUIRED,
                _("%(below)s; the level-%(level)s warning must be sent before a trip.")
                % {"below": below, "level": level},
                [WARNING_REQUIRED, *other_blocks],
            )

        blocks: list[str] = []
        details: list[str] = []
        if state.protected:
            blocks.append(PROTECTED)
            details.append(_("the customer is protected (keep-power)"))
        for code, detail in windows_now:
            blocks.append(code)
            details.append(
                {
                    "event": _("declared event “%(detail)s”") % {"detail": detail},
                    "holiday": _("public holiday (%(detail)s)") % {"detail": detail},
                }.get(code, _("night hours %(detail)s") % {"detail": detail})
            )
        if warned_at is not None:
            grace_ends_at = warned_at + settings.grace_period
            numbers["grace_ends_at"] = grace_ends_at.isoformat()
            if now < grace_ends_at:
                blocks.append(GRACE_PERIOD)
                details.append(
                    _("the grace period after the warning runs until %(until)s")
                    % {"until": grace_ends_at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")}
                )
        if blocks:
            reason = PROTECTED if state.protected else NO_TRIP_WINDOW if window_codes else GRACE_PERIOD
            message = _("%(below)s; trip withheld: %(details)s.") % {
                "below": below,
                "details": "; ".join(details),
            }
            return result("trip_withheld", reason, message, blocks)
        return result("trip", "below_trip_threshold", _("%(below)s: cut off supply.") % {"below": below})

    # 3. The warning ladder.
    if available <= settings.warning2_threshold and state.state != "warning2":
        return result(
            "warn2",
            "below_warning2_threshold",
            _("Available balance %(available)s yuan has reached the level-2 warning threshold %(w2)s yuan.")
            % fig,
        )
    if available <= settings.warning1_threshold and state.state == "normal":
        return result(
            "warn1",
            "below_warning1_threshold",
            _("Available balance %(available)s yuan has reached the level-1 warning threshold %(w1)s yuan.")
            % fig,
        )
    if state.state in ("warning1", "warning2") and available > settings.warning1_threshold:
        return result(
            "recover",
            "above_warning1_threshold",
            _(
                "Available balance %(available)s yuan is above the level-1 warning threshold "
                "%(w1)s yuan again: warnings are over."
            )
            % fig,
        )
    return result("none", "no_change", _("Available balance %(available)s yuan: nothing to do.") % fig)


def _required_warning_at(required: int, state: PolicyState) -> datetime | None:
    """When the warning that satisfies the requirement was sent in this episode, or None."""
    if required == 0:
        return None
    warning1_at = state.warning1_at if state.state in ("warning1", "warning2") else None
    warning2_at = state.warning2_at if state.state == "warning2" else None
    if required == 1:
        return warning1_at or warning2_at
    return warning2_at
