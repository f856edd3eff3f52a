"""Billing in the Django admin.

Tariffs are data kept by tariff clerks here: a tariff and its dated versions, each version
with its blocks (tiers), included funds and time-of-use periods as inlines. A version is
checked as a whole before it is saved (``billing.rating.validation.validate_version`` plus
block numbering and non-overlapping effective dates), and the same check runs after an
import (django-import-export), which is rolled back when it fails. Tariff tables are
exported and imported keyed by natural keys: tariff code, version start date, tier number,
fund code, TOU season and start.

The ledger, policy decisions, adjustments and rating state are written by services only:
their admins are read-only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.forms.models import BaseInlineFormSet
from django.utils.translation import gettext as _
from import_export import fields, resources, widgets
from import_export.admin import ImportExportModelAdmin

from billing.models import (
    AccountBilling,
    AccountTariff,
    AdjustmentRequest,
    CostControlPolicy,
    LedgerEntry,
    NoTripEvent,
    PolicyDecision,
    PowerFactorRow,
    RatingCursor,
    Tariff,
    TariffSurcharge,
    TariffTier,
    TariffVersion,
    TierAccumulator,
    TouPeriod,
)
from billing.rating import model as rm
from billing.rating.validation import validate_version
from billing.services.accounts import tariff_assign

# ----------------------------------------------------------------------------- version checks


def _months(text: str) -> frozenset[int] | None:
    try:
        return frozenset(int(m) for m in str(text).split(",") if m.strip())
    except ValueError:
        return None


def version_problems(
    *,
    tariff: Tariff,
    version_pk: int | None,
    effective_from: date,
    effective_to: date | None,
    prices: dict[str, Decimal | None],
    tier_basis: str,
    basic_basis: str,
    basic_price: Decimal,
    pf_standard: str,
    tiers: Iterable[dict],
    surcharges: Iterable[dict],
    periods: Iterable[dict],
    allow_missing_tiers: bool = False,
) -> list[str]:
    """Every problem of a tariff version with its parts (dicts of model field values), as
    messages a tariff clerk can act on; empty when the version may be saved."""
    errors: list[str] = []
    tiers = sorted(tiers, key=lambda t: t["number"])
    numbers = [t["number"] for t in tiers]
    if numbers != list(range(1, len(numbers) + 1)):
        errors.append(_("Blocks must be numbered 1, 2, 3… without gaps."))

    tou = []
    for p in periods:
        months = _months(p["months"])
        if months is None:
            errors.append(
                _("Months “%(months)s” must be month numbers separated by commas.") % {"months": p["months"]}
            )
            continue
        tou.append(rm.TouPeriod(band=p["band"], start=p["start"], end=p["end"], months=months))

    spec = rm.PriceVersion(
        effective_from=effective_from,
        effective_to=effective_to,
        energy_prices={band: price for band, price in prices.items() if price is not None},
        tier_basis=tier_basis,
        tiers=tuple(rm.Tier(upper_kwh=t["upper_kwh"], price_adder=t["price_adder"]) for t in tiers),
        basic_basis=basic_basis,
        basic_price=basic_price if basic_price is not None else Decimal("0"),
        pf_standard=Decimal(pf_standard) if pf_standard else None,
        surcharges=tuple(
            rm.Surcharge(code=s["code"], name=s["name"], price_per_kwh=s["price_per_kwh"]) for s in surcharges
        ),
    )
    if allow_missing_tiers and not spec.tiers:
        # an import of versions comes before the import of their blocks
        spec = dataclasses.replace(spec, tier_basis="none")
    errors.extend(str(e) for e in validate_version(spec, tou, holiday_band=tariff.holiday_band or None))

    others = TariffVersion.objects.filter(tariff=tariff).exclude(pk=version_pk).order_by("effective_from")
    for other in others:
        if (other.effective_to is None or effective_from < other.effective_to) and (
            effective_to is None or other.effective_from < effective_to
        ):
            errors.append(
                _(
                    "The dates overlap the version from %(start)s%(until)s; versions of a tariff must not "
                    "overlap (give the earlier version an end date first)."
                )
                % {
                    "start": other.effective_from.isoformat(),
                    "until": _(" until %(end)s") % {"end": other.effective_to.isoformat()}
                    if other.effective_to
                    else "",
                }
            )
    return errors


def stored_version_problems(version: TariffVersion, *, allow_missing_tiers: bool = False) -> list[str]:
    """``version_problems`` of a version as stored (after an import)."""
    return version_problems(
        tariff=version.tariff,
        version_pk=version.pk,
        effective_from=version.effective_from,
        effective_to=version.effective_to,
        prices={band: getattr(version, f"price_{band}") for band in rm.BANDS},
        tier_basis=version.tier_basis,
        basic_basis=version.basic_basis,
        basic_price=version.basic_price,
        pf_standard=version.pf_standard,
        tiers=version.tiers.values("number", "upper_kwh", "price_adder"),
        surcharges=version.surcharges.values("code", "name", "price_per_kwh"),
        periods=version.tou_periods.values("months", "start", "end", "band"),
        allow_missing_tiers=allow_missing_tiers,
    )


# ----------------------------------------------------------------------------- import / export


class TariffVersionKeyWidget(widgets.ForeignKeyWidget):
    """A tariff version named by two columns: ``tariff`` (code) and ``effective_from``."""

    def __init__(self):
        super().__init__(TariffVersion)
        self.date_widget = widgets.DateWidget()

    def get_lookup_kwargs(self, value, row, **kwargs):
        return {"tariff__code": row["tariff"], "effective_from": self.date_widget.clean(value)}

    def clean(self, value, row=None, **kwargs):
        try:
            return super().clean(value, row=row, **kwargs)
        except TariffVersion.DoesNotExist:
            raise ValueError(
                _("No version of tariff %(code)s from %(start)s; import the versions first.")
                % {"code": row.get("tariff"), "start": value}
            ) from None

    def render(self, value, obj=None, **kwargs):
        return value.effective_from.isoformat() if value is not None else ""


class _ChecksVersions:
    """After an import, check every version it touched as a whole; an exception here makes
    import-export report the error and roll the import back."""

    allow_missing_tiers = False

    def before_import(self, dataset, **kwargs):
        super().before_import(dataset, **kwargs)
        self._touched_versions: set[int] = set()

    def version_of(self, instance) -> int:
        return instance.version_id

    def after_save_instance(self, instance, row, **kwargs):
        super().after_save_instance(instance, row, **kwargs)
        self._touched_versions.add(self.version_of(instance))

    def after_import(self, dataset, result, **kwargs):
        super().after_import(dataset, result, **kwargs)
        problems = []
        versions = TariffVersion.objects.filter(pk__in=self._touched_versions).select_related("tariff")
        for version in versions.order_by("tariff__code", "effective_from"):
            for message in stored_version_problems(version, allow_missing_tiers=self.allow_missing_tiers):
                problems.append(f"{version.tariff.code} {version.effective_from}: {message}")
        if problems:
            raise forms.ValidationError(problems)


class TariffResource(resources.ModelResource):
    class Meta:
        model = Tariff
        import_id_fields = ["code"]
        fields = ["code", "name", "category", "description", "holiday_band", "active"]
        export_order = fields
        skip_unchanged = True
        report_skipped = False
        clean_model_instances = True


class TariffVersionResource(_ChecksVersions, resources.ModelResource):
    allow_missing_tiers = True

    tariff = fields.Field(
        attribute="tariff", column_name="tariff", widget=widgets.ForeignKeyWidget(Tariff, "code")
    )

    def version_of(self, instance) -> int:
        return instance.pk

    class Meta:
        model = TariffVersion
        import_id_fields = ["tariff", "effective_from"]
        fields = [
            "tariff",
            "effective_from",
            "effective_to",
            "price_flat",
            "price_sharp",
            "price_peak",
            "price_valley",
            "tier_basis",
            "basic_basis",
            "basic_price",
            "pf_standard",
            "note",
        ]
        export_order = fields
        skip_unchanged = True
        report_skipped = False
        clean_model_instances = True


class _VersionPartResource(_ChecksVersions, resources.ModelResource):
    tariff = fields.Field(attribute="version__tariff__code", column_name="tariff", readonly=True)
    version = fields.Field(attribute="version", column_name="effective_from", widget=TariffVersionKeyWidget())

    def get_queryset(self):
        return super().get_queryset().select_related("version__tariff")


class TariffTierResource(_VersionPartResource):
    class Meta:
        model = TariffTier
        import_id_fields = ["version", "number"]
        fields = ["tariff", "version", "number", "upper_kwh", "price_adder"]
        export_order = fields
        clean_model_instances = True


class TariffSurchargeResource(_VersionPartResource):
    class Meta:
        model = TariffSurcharge
        import_id_fields = ["version", "code"]
        fields = ["tariff", "version", "code", "name", "price_per_kwh"]
        export_order = fields
        clean_model_instances = True


class TouPeriodResource(_VersionPartResource):
    class Meta:
        model = TouPeriod
        import_id_fields = ["version", "months", "start"]
        fields = ["tariff", "version", "months", "start", "end", "band"]
        export_order = fields
        clean_model_instances = True


# ----------------------------------------------------------------------------- tariffs


class TariffVersionInline(admin.TabularInline):
    """Versions are edited on their own page, with their blocks, funds and periods."""

    model = TariffVersion
    fields = [
        "effective_from",
        "effective_to",
        "price_flat",
        "tier_basis",
        "basic_basis",
        "pf_standard",
        "note",
    ]
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class TariffForm(forms.ModelForm):
    class Meta:
        model = Tariff
        fields = ["code", "name", "category", "description", "holiday_band", "active"]

    def clean(self):
        data = super().clean()
        band = data.get("holiday_band")
        if band and self.instance.pk:
            unpriced = [
                v.effective_from.isoformat()
                for v in self.instance.versions.all()
                if getattr(v, f"price_{band}") is None
            ]
            if unpriced:
                raise forms.ValidationError(
                    _("The holiday band %(band)s has no price in the versions from %(dates)s.")
                    % {"band": band, "dates": ", ".join(unpriced)}
                )
        return data


@admin.register(Tariff)
class TariffAdmin(ImportExportModelAdmin):
    form = TariffForm
    resource_classes = [TariffResource]
    list_display = ["code", "name", "category", "active"]
    list_filter = ["category", "active"]
    search_fields = ["code", "name"]
    inlines = [TariffVersionInline]


class _VersionPartsFormSet(BaseInlineFormSet):
    """The inline formsets of one version page register with each other (through the
    request) so that the version can be checked as a whole."""

    def __init__(self, *args, version_parts=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.version_parts = version_parts if version_parts is not None else []
        self.version_parts.append(self)

    def rows(self) -> list[dict]:
        return [
            f.cleaned_data
            for f in self.forms
            if getattr(f, "cleaned_data", None) and not f.cleaned_data.get("DELETE")
        ]


class TouPeriodFormSet(_VersionPartsFormSet):
    def clean(self):
        super().clean()
        siblings = {fs.model: fs for fs in self.version_parts}
        if not all(fs.is_valid() for fs in siblings.values() if fs is not self):
            return
        version = self.instance  # carries the main form's values (validated before the inlines)
        if version.tariff_id is None or version.effective_from is None or version.price_flat is None:
            return
        tiers = siblings[TariffTier].rows() if TariffTier in siblings else []
        surcharges = siblings[TariffSurcharge].rows() if TariffSurcharge in siblings else []
        problems = version_problems(
            tariff=version.tariff,
            version_pk=version.pk,
            effective_from=version.effective_from,
            effective_to=version.effective_to,
            prices={band: getattr(version, f"price_{band}") for band in rm.BANDS},
            tier_basis=version.tier_basis,
            basic_basis=version.basic_basis,
            basic_price=version.basic_price,
            pf_standard=version.pf_standard,
            tiers=tiers,
            surcharges=surcharges,
            periods=self.rows(),
        )
        if problems:
            raise forms.ValidationError(problems)


class TariffTierInline(admin.TabularInline):
    model = TariffTier
    formset = _VersionPartsFormSet
    extra = 0


class TariffSurchargeInline(admin.TabularInline):
    model = TariffSurcharge
    formset = _VersionPartsFormSet
    extra = 0


class TouPeriodInline(admin.TabularInline):
    model = TouPeriod
    formset = TouPeriodFormSet
    extra = 0


@admin.register(TariffVersion)
class TariffVersionAdmin(ImportExportModelAdmin):
    resource_classes = [TariffVersionResource]
    list_display = ["tariff", "effective_from", "effective_to", "price_flat", "tier_basis", "basic_basis"]
    list_filter = ["tier_basis", "basic_basis", "tariff__category"]
    search_fields = ["tariff__code", "tariff__name", "note"]
    list_select_related = ["tariff"]
    autocomplete_fields = ["tariff"]
    # TOU periods last: their formset checks the whole version once the others are clean.
    inlines = [TariffTierInline, TariffSurchargeInline, TouPeriodInline]

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        kwargs["version_parts"] = request.__dict__.setdefault("_billing_version_parts", [])
        return kwargs


@admin.register(TariffTier)
class TariffTierAdmin(ImportExportModelAdmin):
    """Import / export of blocks; edit them on the version page."""

    resource_classes = [TariffTierResource]
    list_display = ["version", "number", "upper_kwh", "price_adder"]
    list_select_related = ["version__tariff"]
    search_fields = ["version__tariff__code"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(TariffSurcharge)
class TariffSurchargeAdmin(ImportExportModelAdmin):
    """Import / export of funds; edit them on the version page."""

    resource_classes = [TariffSurchargeResource]
    list_display = ["version", "code", "name", "price_per_kwh"]
    list_select_related = ["version__tariff"]
    search_fields = ["version__tariff__code", "code", "name"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(TouPeriod)
class TouPeriodAdmin(ImportExportModelAdmin):
    """Import / export of time-of-use periods; edit them on the version page."""

    resource_classes = [TouPeriodResource]
    list_display = ["version", "months", "start", "end", "band"]
    list_filter = ["band"]
    list_select_related = ["version__tariff"]
    search_fields = ["version__tariff__code"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# ----------------------------------------------------------------------------- read-only


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by services (and, for the ledger, protected by a database trigger)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PowerFactorRow)
class PowerFactorRowAdmin(ReadOnlyAdmin):
    list_display = ["standard", "power_factor", "adjustment_percent"]
    list_filter = ["standard"]
    list_per_page = 200


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "account",
        "business_date",
        "kind",
        "amount",
        "kwh",
        "source",
        "source_ref",
        "created_at",
    ]
    list_filter = ["kind", "source"]
    search_fields = ["=account__number", "=source_ref", "=idempotency_key"]
    list_select_related = ["account"]
    show_full_result_count = False  # the ledger is large; no COUNT(*) per page


@admin.register(PolicyDecision)
class PolicyDecisionAdmin(ReadOnlyAdmin):
    list_display = ["decided_at", "account", "action", "reason", "state_before", "state_after", "trigger"]
    list_filter = ["action", "trigger"]
    search_fields = ["=account__number", "reason"]
    list_select_related = ["account"]
    show_full_result_count = False


@admin.register(AdjustmentRequest)
class AdjustmentRequestAdmin(ReadOnlyAdmin):
    """Requested and decided on the account's billing page (four eyes, audited)."""

    list_display = ["requested_at", "account", "amount", "status", "requested_by", "decided_by", "decided_at"]
    list_filter = ["status"]
    search_fields = ["=account__number", "reason"]
    list_select_related = ["account", "requested_by", "decided_by"]


@admin.register(TierAccumulator)
class TierAccumulatorAdmin(ReadOnlyAdmin):
    list_display = ["account", "period_start", "kwh"]
    search_fields = ["=account__number"]
    list_select_related = ["account"]
    show_full_result_count = False


@admin.register(RatingCursor)
class RatingCursorAdmin(ReadOnlyAdmin):
    list_display = ["meter", "account", "read_date", "total", "estimated", "updated_at"]
    search_fields = ["=meter__asset_number", "=account__number"]
    list_select_related = ["meter", "account"]
    show_full_result_count = False


# ----------------------------------------------------------------------------- editable terms


@admin.register(CostControlPolicy)
class CostControlPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "code",
        "name",
        "category",
        "importance_grade",
        "warning1_threshold",
        "warning2_threshold",
        "trip_threshold",
        "close_threshold",
        "credit_allowance",
    ]
    list_filter = ["category", "importance_grade"]
    search_fields = ["code", "name"]


@admin.register(NoTripEvent)
class NoTripEventAdmin(admin.ModelAdmin):
    list_display = ["name", "starts_at", "ends_at", "created_by"]
    readonly_fields = ["created_by"]
    date_hierarchy = "starts_at"

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(AccountBilling)
class AccountBillingAdmin(admin.ModelAdmin):
    """Only the staff-set terms (credit allowance, contract policy) are edited here; the
    balance and state are moved by the ledger and the policy services."""

    list_display = ["account", "balance", "state", "credit_allowance", "policy", "last_rated_at"]
    list_filter = ["state", "policy"]
    search_fields = ["=account__number"]
    list_select_related = ["account", "policy"]
    fields = [
        "account",
        "balance",
        "credit_allowance",
        "policy",
        "state",
        "state_changed_at",
        "warning1_at",
        "warning2_at",
        "tripped_at",
        "withheld_reason",
        "last_rated_at",
    ]
    readonly_fields = [f for f in fields if f not in ("credit_allowance", "policy")]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        # Never write the whole row: the balance moves concurrently with F() under the ledger lock.
        obj.save(update_fields=["credit_allowance", "policy", "updated_at"])


class AccountTariffForm(forms.ModelForm):
    class Meta:
        model = AccountTariff
        fields = ["account", "tariff", "effective_from"]

    def clean(self):
        data = super().clean()
        account, start = data.get("account"), data.get("effective_from")
        if account and start and start < account.opened_on:
            raise forms.ValidationError(_("A tariff cannot start before the account was opened."))
        return data


@admin.register(AccountTariff)
class AccountTariffAdmin(admin.ModelAdmin):
    form = AccountTariffForm
    list_display = ["account", "tariff", "effective_from"]
    list_filter = ["tariff"]
    search_fields = ["=account__number", "tariff__code"]
    list_select_related = ["account", "tariff"]
    raw_id_fields = ["account"]

    def has_change_permission(self, request, obj=None):
        return False  # a change of tariff is a new assignment from a date

    def save_model(self, request, obj, form, change):
        saved = tariff_assign(account=obj.account, tariff=obj.tariff, effective_from=obj.effective_from)
        obj.pk = saved.pk
