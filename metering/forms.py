from crispy_forms.helper import FormHelper
from crispy_forms.layout import Column, Layout, Row, Submit
from django import forms
from django.utils.translation import gettext_lazy as _

from metering.models import CommandAction

MANUAL_ACTIONS = [
    (a.value, a.label)
    for a in (
        CommandAction.TRIP,
        CommandAction.CLOSE,
        CommandAction.CLOSE_ALLOWED,
        CommandAction.ALARM_ON,
        CommandAction.ALARM_OFF,
        CommandAction.KEEP_POWER_ON,
        CommandAction.KEEP_POWER_OFF,
    )
]


class MeterControlForm(forms.Form):
    action = forms.ChoiceField(label=_("Command"), choices=MANUAL_ACTIONS)
    reason = forms.CharField(
        label=_("Reason"),
        max_length=300,
        min_length=4,
        widget=forms.TextInput(
            attrs={"placeholder": _("Why this command is needed (kept in the audit trail)")}
        ),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.form_tag = False
        self.helper.layout = Layout(
            Row(Column("action", css_class="col-md-4"), Column("reason")),
            Submit("submit", _("Send command"), css_class="btn-danger"),
        )


class CollectionDayForm(forms.Form):
    day = forms.DateField(
        label=_("Day"),
        widget=forms.DateInput(attrs={"type": "date", "class": "form-control"}, format="%Y-%m-%d"),
    )
