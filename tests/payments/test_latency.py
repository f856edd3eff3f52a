"""Payment → power back figures: nearest-rank median and 95th percentile, slowest, waiting
and failed closes, and the page that shows them."""

from datetime import timedelta

import pytest
from django.urls import reverse

from metering.models import CommandStatus, RemoteCommand
from payments.models import Payment
from payments.services.latency import restore_figures
from payments.services.posting import payment_post
from tests.billing.services.conftest import at
from tests.billing.services.test_policy_service import evaluate, post

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


def tripped_then_paid(make_prepaid, flat_tariff, ref):
    account, _meter = make_prepaid(flat_tariff)
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, at(2026, 11, 25, 5))
    evaluate(account, at(2026, 11, 25, 10))
    result = payment_post(
        channel="online", external_id=ref, account_number=account.number, amount="50.00", method="online"
    )
    assert result.payment.restore_command_id
    return result.payment


def confirm_after(payment, seconds):
    RemoteCommand.objects.filter(pk=payment.restore_command_id).update(
        status=CommandStatus.CONFIRMED, confirmed_at=payment.posted_at + timedelta(seconds=seconds)
    )


def test_figures_over_confirmed_waiting_and_failed_closes(make_prepaid, flat_tariff, client, staff):
    paid = [tripped_then_paid(make_prepaid, flat_tariff, f"L{i}") for i in range(6)]
    for payment, seconds in zip(paid, [1.0, 2.0, 3.0, 10.0], strict=False):
        confirm_after(payment, seconds)
    RemoteCommand.objects.filter(pk=paid[5].restore_command_id).update(status=CommandStatus.FAILED)
    figures = restore_figures(
        Payment.objects.filter(pk__in=[p.pk for p in paid]).select_related("restore_command")
    )
    # confirmed 1, 2, 3, 10 s: median = 2nd of 4 (nearest rank ceil(4 x 0.5) = 2) = 2.0;
    # 95th = ceil(4 x 0.95) = 4th = 10.0; slowest 10.0; within 2 s: 2 of 4
    assert (figures.confirmed, figures.waiting, figures.failed) == (4, 1, 1)
    assert (figures.median_seconds, figures.p95_seconds, figures.slowest_seconds) == (2.0, 10.0, 10.0)
    assert figures.slowest_payment_id == paid[3].pk and figures.within_2s_share == 0.5

    client.force_login(staff["auditor"])
    day = paid[0].posted_at.date()
    html = client.get(
        reverse("payments:restore-latency"), {"date_from": day, "date_to": day}
    ).content.decode()
    assert 'data-testid="median">2.0 s' in html and 'data-testid="p95">10.0 s' in html
    assert paid[3].account.number in html


def test_the_page_needs_payment_view(client, staff):
    client.force_login(staff["inspector"])
    assert client.get(reverse("payments:restore-latency")).status_code == 403
