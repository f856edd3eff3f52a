"""The agency banks' real-time API: each payment a bank collects is posted at once; the
bank's daily file later reconciles against these postings (payments/services/bank.py).
A bank authenticates as a device of kind "bank" whose code is its bank code."""

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from payments.api import _PAYMENT_RESPONSES, _DeviceApi, _IsDevice
from payments.models import TerminalDevice
from payments.services.bank import bank_payment_post


class IsBank(_IsDevice):
    kind = TerminalDevice.Kind.BANK


class BankPaymentIn(serializers.Serializer):
    bank_serial = serializers.CharField(max_length=40, help_text=_("The bank's serial of the payment."))
    account_number = serializers.CharField(max_length=20)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2)
    paid_at = serializers.DateTimeField(help_text=_("ISO 8601 with a UTC offset."))


class BankPaymentOut(serializers.Serializer):
    payment_id = serializers.IntegerField()
    created = serializers.BooleanField()
    account_number = serializers.CharField()
    amount = serializers.CharField()


class BankPaymentApi(_DeviceApi):
    permission_classes = [IsBank]

    @extend_schema(
        tags=["payments: bank"],
        request=BankPaymentIn,
        responses={201: BankPaymentOut, **{k: v for k, v in _PAYMENT_RESPONSES.items() if k != 201}},
        description=str(_("Post a payment collected by an agency bank, once per bank serial.")),
    )
    def post(self, request):
        data = BankPaymentIn(data=request.data)
        data.is_valid(raise_exception=True)
        result = bank_payment_post(bank_code=request.auth.code, **data.validated_data)
        body = {
            "payment_id": result.payment.pk,
            "created": result.created,
            "account_number": result.payment.account.number,
            "amount": f"{result.payment.amount:.2f}",
        }
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
