"""Payment → power back: for every payment that lifted a tripped prepaid account above its
close threshold, the time from the payment being accepted (posted) to the meter confirming
the close by read-back. Figures per period: count, median, 95th percentile, slowest, and the
payments still waiting or whose close failed (each failed close ends in a field work order)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from core.permissions import Actor
from metering.models import CommandStatus
from payments.models import Payment
from payments.services.counter import payments_visible


@dataclass(frozen=True)
class RestoreFigures:
    confirmed: int
    waiting: int
    failed: int
    median_seconds: float | None
    p95_seconds: float | None
    slowest_seconds: float | None
    slowest_payment_id: int | None
    within_2s_share: float | None


def _percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile (the value at or below which ``share`` of the values lie)."""
    rank = max(1, -(-len(sorted_values) * share // 1))  # ceil(n * share), at least 1
    return sorted_values[int(rank) - 1]


def restore_payments(*, actor: Actor, date_from: date, date_to: date) -> QuerySet[Payment]:
    tz = timezone.get_current_timezone()
    start = datetime.combine(date_from, datetime.min.time(), tz)
    end = datetime.combine(date_to + timedelta(days=1), datetime.min.time(), tz)
    return (
        payments_visible(actor)
        .filter(restore_command__isnull=False, posted_at__gte=start, posted_at__lt=end)
        .select_related("restore_command", "account", "account__customer")
        .order_by("-posted_at")
    )


def restore_latency(payment: Payment) -> float | None:
    cmd = payment.restore_command
    if cmd is None or cmd.status != CommandStatus.CONFIRMED or cmd.confirmed_at is None:
        return None
    return max(0.0, (cmd.confirmed_at - payment.posted_at).total_seconds())


def restore_figures(payments) -> RestoreFigures:
    latencies: list[tuple[float, int]] = []
    waiting = failed = 0
    for p in payments:
        seconds = restore_latency(p)
        if seconds is not None:
            latencies.append((seconds, p.pk))
        elif p.restore_command.status in (
            CommandStatus.FAILED,
            CommandStatus.TIMED_OUT,
            CommandStatus.CANCELLED,
        ):
            failed += 1
        else:
            waiting += 1
    if not latencies:
        return RestoreFigures(0, waiting, failed, None, None, None, None, None)
    values = sorted(s for s, _pk in latencies)
    slowest = max(latencies)
    return RestoreFigures(
        confirmed=len(values),
        waiting=waiting,
        failed=failed,
        median_seconds=_percentile(values, 0.5),
        p95_seconds=_percentile(values, 0.95),
        slowest_seconds=slowest[0],
        slowest_payment_id=slowest[1],
        within_2s_share=sum(1 for v in values if v <= 2.0) / len(values),
    )
