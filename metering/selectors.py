"""Reads of the metering app: querysets with their joins done once."""

from datetime import date

from django.db.models import QuerySet
from django.utils.translation import gettext as _

from core.exceptions import NotFound
from metering.models import DailyReading, Meter, ReadingBatch, RejectedReading


def reading_batch_get(*, source: str, external_id: str) -> ReadingBatch:
    try:
        return ReadingBatch.objects.get(source=source, external_id=external_id)
    except ReadingBatch.DoesNotExist:
        raise NotFound(
            _("No reading batch %(batch)s from %(source)s.") % {"batch": external_id, "source": source}
        ) from None


def reading_batch_rejections(*, batch: ReadingBatch) -> QuerySet[RejectedReading]:
    """The batch's rejected input in the order it was delivered."""
    return RejectedReading.objects.filter(batch=batch).order_by("position", "pk")


def daily_readings_for_meter(
    *, meter: Meter, since: date | None = None, until: date | None = None
) -> QuerySet[DailyReading]:
    """A meter's daily readings, oldest first; bound the dates on big histories (the table
    is partitioned by ``read_date``, so bounds let PostgreSQL skip whole months)."""
    qs = DailyReading.objects.filter(meter=meter)
    if since is not None:
        qs = qs.filter(read_date__gte=since)
    if until is not None:
        qs = qs.filter(read_date__lte=until)
    return qs.order_by("read_date")


# --- staff pages ----------------------------------------------------------------------------


def meters_visible_to(actor):
    """Meters whose transformer area lies in the actor's scope (global roles see all)."""
    from core.exceptions import PermissionDenied
    from core.permissions import Cap, org_scope_q

    if actor is None or not actor.has(Cap.METER_VIEW):
        raise PermissionDenied()
    return Meter.objects.filter(org_scope_q(actor, "transformer_area__supply_station")).select_related(
        "transformer_area",
        "transformer_area__supply_station",
        "terminal",
        "service_point",
        "service_point__customer",
        "service_point__account",
    )


def meter_get(*, actor, asset_number: str) -> Meter:
    try:
        return meters_visible_to(actor).get(asset_number=asset_number)
    except Meter.DoesNotExist:
        raise NotFound() from None


def meter_search(*, actor, query: str = "") -> QuerySet[Meter]:
    from django.db.models import Q

    qs = meters_visible_to(actor)
    query = (query or "").strip()
    if query:
        qs = qs.filter(
            Q(asset_number__startswith=query)
            | Q(comm_address__startswith=query)
            | Q(service_point__customer__number=query)
        )
    return qs.order_by("asset_number")


def meter_daily_series(*, meter: Meter, days: int = 90, until: date | None = None) -> list[dict]:
    """Daily consumption (differences of consecutive readings, rollover-aware) for charts."""
    from datetime import timedelta

    from django.utils import timezone

    from metering.models import REGISTER_ROLLOVER

    until = until or timezone.localdate()
    rows = list(
        daily_readings_for_meter(meter=meter, since=until - timedelta(days=days + 1), until=until).values(
            "read_date", "forward_total", "source", "quality"
        )
    )
    series = []
    for previous, current in zip(rows, rows[1:], strict=False):
        used = current["forward_total"] - previous["forward_total"]
        if used < 0:
            used += REGISTER_ROLLOVER
        gap = (current["read_date"] - previous["read_date"]).days
        series.append(
            {
                "date": current["read_date"].isoformat(),
                "kwh": str((used / gap).quantize(current["forward_total"]) if gap > 1 else used),
                "register": str(current["forward_total"]),
                "source": current["source"],
                "quality": current["quality"],
                "days": gap,
            }
        )
    return series


def meter_commands(*, meter: Meter):
    from metering.models import RemoteCommand

    return (
        RemoteCommand.objects.filter(meter=meter)
        .select_related("requested_by", "work_order")
        .prefetch_related("attempt_log")
        .order_by("-requested_at")
    )


def collection_by_area(*, actor, day: date, unit=None):
    """Collection figures of ``day`` per transformer area in the actor's scope (optionally
    below ``unit``), worst first."""
    from core.exceptions import PermissionDenied
    from core.permissions import Cap, org_scope_q
    from metering.models import CollectionDayStat

    if actor is None or not actor.has(Cap.COLLECTION_VIEW):
        raise PermissionDenied()
    qs = CollectionDayStat.objects.filter(day=day).filter(
        org_scope_q(actor, "transformer_area__supply_station")
    )
    if unit is not None:
        qs = qs.filter(transformer_area__supply_station__path__startswith=unit.path)
    return qs.select_related("transformer_area", "transformer_area__supply_station")


def collection_totals(stats) -> dict:
    from django.db.models import Sum

    totals = stats.aggregate(expected=Sum("expected"), collected=Sum("collected"), estimated=Sum("estimated"))
    expected = totals["expected"] or 0
    collected = totals["collected"] or 0
    totals["expected"], totals["collected"] = expected, collected
    totals["estimated"] = totals["estimated"] or 0
    totals["success_rate"] = round(100 * collected / expected, 1) if expected else None
    return totals
