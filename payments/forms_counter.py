"""Forms of the counter pages. Formats here; business rules (limits, change, shift) in the
services. The payment form carries its receipt number in a signed hidden field: a resubmitted
form posts the same number, which returns the first payment instead of a second one."""

from decimal import Decimal

from django import forms
from django.core import signing
from django.utils.translation import gettext_lazy as _

from payments.models import Channel, Method

_DATE = forms.DateInput(attrs={"type": "date", "class": "form-control"})
_MONEY = {"max_digits": 14, "decimal_places": 2}
TOKEN_SALT = "payments.counter.receipt"  # noqa: S105  (a signing salt, not a secret)
TOKEN_MAX_AGE = 12 * 3600  # a form left open longer is reloaded


def payment_token(*, receipt_number: str, user_id: int, account_number: str) -> str:
    return signing.dumps({"r": receipt_number, "u": user_id, "a": account_number}, salt=TOKEN_SALT)


class ShiftOpenForm(forms.Form):
    opening_float = forms.DecimalField(
        label=_("Opening float (cash in the drawer)"), min_value=Decimal("0"), initial=Decimal("0"), **_MONEY
    )


class ShiftSettleForm(forms.Form):
    counted_cash = forms.DecimalField(label=_("Cash counted"), min_value=Decimal("0"), **_MONEY)
    note = forms.CharField(label=_("Note"), max_length=300, required=False)


class CounterPaymentForm(forms.Form):
    amount = forms.DecimalField(label=_("Amount (yuan)"), min_value=Decimal("0.01"), **_MONEY)
    method = forms.ChoiceField(
        label=_("Method"),
        choices=[(Method.CASH.value, Method.CASH.label), (Method.CARD.value, Method.CARD.label)],
        initial=Method.CASH.value,
        widget=forms.RadioSelect,
    )
    cash_tendered = forms.DecimalField(
        label=_("Cash tendered"),
        required=False,
        min_value=Decimal("0"),
        help_text=_("For cash: what the customer hands over; leave empty for the exact amount."),
        **_MONEY,
    )
    payer = forms.CharField(label=_("Payer"), max_length=100, required=False)
    token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, user_id: int, account_number: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.user_id = user_id
        self.account_number = account_number

    def clean_token(self) -> str:
        """The receipt number, if the token was issued to this user for this account."""
        try:
            data = signing.loads(self.cleaned_data["token"], salt=TOKEN_SALT, max_age=TOKEN_MAX_AGE)
        except signing.SignatureExpired:
            raise forms.ValidationError(
                _("This form has expired. Reload the page and enter it again.")
            ) from None
        except signing.BadSignature:
            raise forms.ValidationError(_("This form is not valid. Reload the page.")) from None
        if data.get("u") != self.user_id or data.get("a") != self.account_number:
            raise forms.ValidationError(_("This form is not valid. Reload the page."))
        return data["r"]

    def clean(self):
        data = super().clean()
        amount, tendered = data.get("amount"), data.get("cash_tendered")
        if (
            data.get("method") == Method.CASH
            and amount is not None
            and tendered is not None
            and tendered < amount
        ):
            self.add_error("cash_tendered", _("Less than the amount."))
        return data


class PaymentHistoryFilterForm(forms.Form):
    account = forms.CharField(
        label=_("Account"),
        max_length=20,
        required=False,
        widget=forms.TextInput(attrs={"class": "form-control"}),
    )
    channel = forms.ChoiceField(
        label=_("Channel"),
        required=False,
        choices=[("", _("All channels")), *Channel.choices],
        widget=forms.Select(attrs={"class": "form-select"}),
    )
    date_from = forms.DateField(label=_("From"), required=False, widget=_DATE)
    date_to = forms.DateField(label=_("To"), required=False, widget=_DATE)

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError(_("The start date must not be after the end date."))
        return data


class ShiftDayForm(forms.Form):
    hall = forms.ChoiceField(label=_("Hall"), widget=forms.Select(attrs={"class": "form-select"}))
    date = forms.DateField(label=_("Date"), widget=_DATE)

    def __init__(self, *args, halls, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["hall"].choices = [(h.code, f"{h.code} {h.name}") for h in halls]
