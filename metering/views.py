"""Staff pages of metering: meters (with readings chart, commands and manual control) and
collection success per transformer area and day."""

from datetime import timedelta
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import DecimalField, ExpressionWrapper, F
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core.exceptions import ApplicationError, ValidationError
from core.models import OrgUnit
from core.permissions import Cap, can_see_unit, require
from metering import selectors
from metering.forms import CollectionDayForm, MeterControlForm
from metering.models import CommandOrigin


@login_required
def meter_list(request):
    actor = require(request.user, Cap.METER_VIEW)
    query = request.GET.get("q", "")
    page = Paginator(selectors.meter_search(actor=actor, query=query), 25).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request, "metering/meter_list.html", {"page": page, "query": query, "querystring": params.urlencode()}
    )


@login_required
def meter_detail(request, asset_number):
    actor = require(request.user, Cap.METER_VIEW)
    meter = selectors.meter_get(actor=actor, asset_number=asset_number)
    series = selectors.meter_daily_series(meter=meter, days=90)
    latest = selectors.daily_readings_for_meter(meter=meter).order_by("-read_date").first()
    commands = list(selectors.meter_commands(meter=meter)[:30])
    return render(
        request,
        "metering/meter_detail.html",
        {
            "meter": meter,
            "series": series,
            "latest": latest,
            "commands": commands,
            "can_control": actor.has(Cap.METER_CONTROL),
            "control_form": MeterControlForm(),
        },
    )


@login_required
@require_POST
def meter_control(request, asset_number):
    actor = require(request.user, Cap.METER_CONTROL)
    meter = selectors.meter_get(actor=actor, asset_number=asset_number)
    from metering.services.commands import command_request

    form = MeterControlForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return redirect("metering:meter-detail", asset_number=meter.asset_number)
    try:
        command = command_request(
            meter=meter,
            action=form.cleaned_data["action"],
            reason=form.cleaned_data["reason"],
            origin=CommandOrigin.STAFF,
            actor=actor,
        )
    except ValidationError as exc:
        for field_messages in exc.field_errors.values() or [[exc.message]]:
            for message in field_messages:
                messages.error(request, message)
    except ApplicationError as exc:
        messages.error(request, str(exc.message))
    else:
        messages.success(
            request,
            _("%(action)s queued for meter %(meter)s; the page shows when the meter confirms it.")
            % {"action": command.get_action_display(), "meter": meter.asset_number},
        )
    return redirect("metering:meter-detail", asset_number=meter.asset_number)


@login_required
def collection_day(request):
    actor = require(request.user, Cap.COLLECTION_VIEW)
    yesterday = timezone.localdate() - timedelta(days=1)
    form = CollectionDayForm(request.GET if "day" in request.GET else None, initial={"day": yesterday})
    day = form.cleaned_data["day"] if form.is_bound and form.is_valid() else yesterday
    unit = None
    unit_code = request.GET.get("unit", "")
    if unit_code:
        unit = OrgUnit.objects.filter(code=unit_code).first()
        if unit is None or not can_see_unit(actor, unit):
            unit = None
    stats = selectors.collection_by_area(actor=actor, day=day, unit=unit)
    totals = selectors.collection_totals(stats)
    rate = ExpressionWrapper(F("collected") * Decimal("100") / F("expected"), output_field=DecimalField())
    areas = stats.filter(expected__gt=0).annotate(rate=rate).order_by("rate", "transformer_area__code")
    by_station = {}
    for stat in areas:
        station = stat.transformer_area.supply_station
        row = by_station.setdefault(
            station.pk, {"station": station, "expected": 0, "collected": 0, "estimated": 0}
        )
        row["expected"] += stat.expected
        row["collected"] += stat.collected
        row["estimated"] += stat.estimated
    stations = sorted(by_station.values(), key=lambda r: r["station"].code)
    for row in stations:
        row["success_rate"] = round(100 * row["collected"] / row["expected"], 1) if row["expected"] else None
    page = Paginator(areas, 50).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "metering/collection_day.html",
        {
            "form": form,
            "day": day,
            "totals": totals,
            "stations": stations,
            "page": page,
            "unit": unit,
            "querystring": params.urlencode(),
        },
    )
