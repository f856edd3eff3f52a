"""Machine APIs of payments: self-service terminals and the phone system (IVR), signed
gateway notifications, and the status of an online order.

input serializer -> service -> output serializer. Terminals and the IVR authenticate with
device credentials (``Authorization: Device <code>:<secret>``, see payments.services.devices);
a gateway authenticates by the signature on its notification, so the notify endpoint takes
no credentials and no CSRF token: it is called server to server by the gateway, never by a
browser with our cookies, and CSRF protects only cookie-authenticated requests (DRF's views
are CSRF-exempt unless session authentication is used, and this one uses none).
"""

from django.http import HttpResponse
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.fields import SkipField, empty
from rest_framework.response import Response
from rest_framework.views import APIView

from metering.api import DecimalJSONParser
from payments.models import Method, TerminalDevice
from payments.services import devices, online

DEVICE_SCHEME = "Device"


# --- device authentication -----------------------------------------------------------------


class DevicePrincipal:
    """``request.user`` of a device request: not a person, never staff."""

    is_authenticated = True
    is_active = True
    is_superuser = False
    is_staff = False
    pk = None

    def __init__(self, device: TerminalDevice):
        self.device = device

    def get_username(self) -> str:
        return f"device:{self.device.code}"

    def __str__(self):
        return self.get_username()


class DeviceAuthentication(BaseAuthentication):
    """``Authorization: Device <code>:<secret>``. Wrong credentials: 401; too many: 429."""

    def authenticate(self, request):
        raw = get_authorization_header(request)
        if not raw:
            return None
        parts = raw.decode("latin-1").split(None, 1)
        if parts[0].lower() != DEVICE_SCHEME.lower():
            return None
        code, _sep, secret = (parts[1] if len(parts) == 2 else "").strip().partition(":")
        try:
            device = devices.device_authenticate(
                code=code, secret=secret, client_addr=request.META.get("REMOTE_ADDR", "")
            )
        except devices.DeviceAuthFailed as exc:
            raise AuthenticationFailed(str(exc.message), code=exc.code) from None
        return DevicePrincipal(device), device

    def authenticate_header(self, request):
        return f'{DEVICE_SCHEME} realm="kilowatt-payments"'


class DeviceAuthScheme(OpenApiAuthenticationExtension):
    target_class = "payments.api.DeviceAuthentication"
    name = "deviceAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": str(_("Device credentials: `Device <code>:<secret>`.")),
        }


class _IsDevice(permissions.BasePermission):
    kind = ""
    message = _("This device may not use this service.")

    def has_permission(self, request, view):
        device = request.auth
        return isinstance(device, TerminalDevice) and device.kind == self.kind


class IsTerminal(_IsDevice):
    kind = TerminalDevice.Kind.TERMINAL


class IsIvr(_IsDevice):
    kind = TerminalDevice.Kind.IVR


class _DeviceApi(APIView):
    authentication_classes = [DeviceAuthentication]
    parser_classes = [DecimalJSONParser]


# --- serializers ---------------------------------------------------------------------------


def _amount_field(**kwargs):
    return serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        help_text=_("Yuan, at most two decimals (a JSON number or string)."),
        **kwargs,
    )


class DeviceAccountOut(serializers.Serializer):
    account_number = serializers.CharField()
    customer_name = serializers.CharField(help_text=_("Masked: first character only (张*)."))
    status = serializers.CharField()
    balance = serializers.DecimalField(max_digits=14, decimal_places=2)
    available_balance = serializers.DecimalField(max_digits=14, decimal_places=2)
    state = serializers.CharField(help_text=_("Cost-control state: normal, warning1, warning2, tripped."))
    state_label = serializers.CharField()
    close_threshold = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        allow_null=True,
        help_text=_("Power is restored when the available balance rises above this."),
    )


class RestoreOut(serializers.Serializer):
    status = serializers.CharField(
        help_text=_(
            "not_needed, still_off (pay more), pending, restored (the meter confirmed the close: "
            "power is back) or failed."
        )
    )
    message = serializers.CharField()
    command_id = serializers.IntegerField(allow_null=True)
    command_status = serializers.CharField()
    confirmed_at = serializers.DateTimeField(allow_null=True)


class DevicePaymentOut(serializers.Serializer):
    payment_id = serializers.IntegerField(source="result.payment.pk")
    created = serializers.BooleanField(
        source="result.created", help_text=_("False: a repeat of an earlier request.")
    )
    channel = serializers.CharField(source="result.payment.channel")
    reference = serializers.CharField(source="result.payment.external_id")
    amount = serializers.DecimalField(source="result.payment.amount", max_digits=14, decimal_places=2)
    posted_at = serializers.DateTimeField(source="result.payment.posted_at")
    account = DeviceAccountOut(help_text=_("The account after the payment (balance after)."))
    restore = RestoreOut()


class TerminalPaymentIn(serializers.Serializer):
    txn_id = serializers.CharField(
        max_length=64,
        help_text=_("The terminal's own transaction id; sending it again returns the first result."),
    )
    account_number = serializers.CharField(max_length=20)
    amount = _amount_field()
    method = serializers.ChoiceField(choices=[Method.CASH, Method.CARD])


class IvrPaymentIn(serializers.Serializer):
    call_id = serializers.CharField(
        max_length=64, help_text=_("The call's id; sending it again returns the first result.")
    )
    account_number = serializers.CharField(max_length=20)
    amount = _amount_field()


class IvrVoucherRedeemIn(serializers.Serializer):
    serial = serializers.CharField(max_length=40)
    pin = serializers.CharField(max_length=40)
    account_number = serializers.CharField(max_length=20)
    caller = serializers.CharField(max_length=32, help_text=_("The calling number (keys the lockout)."))


class IvrBalanceQuery(serializers.Serializer):
    customer_number = serializers.CharField(max_length=16)


class IvrBalanceOut(serializers.Serializer):
    customer_number = serializers.CharField()
    customer_name = serializers.CharField()
    accounts = DeviceAccountOut(many=True)


class OnlineOrderOut(serializers.Serializer):
    order_no = serializers.CharField()
    provider = serializers.CharField()
    status = serializers.CharField(help_text=_("created (awaiting payment), paid, failed or expired."))
    amount = serializers.DecimalField(max_digits=14, decimal_places=2)
    account_number = serializers.CharField(source="account.number")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)
    payment_id = serializers.IntegerField(allow_null=True)
    restore = RestoreOut(allow_null=True)


# The reply of every device payment is built by hand with these fields' own formats: the
# same JSON as ``DevicePaymentOut(paid).data`` (tests/payments/test_posting_fast.py checks
# it), without instantiating ~20 serializer fields per request (a deep copy of each: about a
# tenth of a payment's CPU time). DevicePaymentOut stays the documented schema.
_MONEY = serializers.DecimalField(max_digits=14, decimal_places=2)
_TIME = serializers.DateTimeField()


def _money(value):
    return None if value is None else _MONEY.to_representation(value)


def _time(value):
    return None if value is None else _TIME.to_representation(value)


def device_account_body(info: devices.AccountInfo) -> dict:
    return {
        "account_number": info.account_number,
        "customer_name": info.customer_name,
        "status": str(info.status),
        "balance": _money(info.balance),
        "available_balance": _money(info.available_balance),
        "state": str(info.state),
        "state_label": str(info.state_label),
        "close_threshold": _money(info.close_threshold),
    }


def device_payment_body(paid: devices.DevicePayment) -> dict:
    payment, restore = paid.result.payment, paid.restore
    return {
        "payment_id": payment.pk,
        "created": bool(paid.result.created),
        "channel": str(payment.channel),
        "reference": payment.external_id,
        "amount": _money(payment.amount),
        "posted_at": _time(payment.posted_at),
        "account": device_account_body(paid.account),
        "restore": {
            "status": str(restore.status),
            "message": str(restore.message),
            "command_id": restore.command_id,
            "command_status": str(restore.command_status),
            "confirmed_at": _time(restore.confirmed_at),
        },
    }


_BOUND_FIELDS: dict[type, dict] = {}


def device_payment_input(serializer_class: type[serializers.Serializer], data) -> dict:
    """``serializer_class(data=data)``'s validated data, or its ValidationError (the same
    400 body), for the flat input serializers of device payments: every field is validated
    by the serializer's own field, bound once per process instead of deep-copied on every
    request (input serializers hold no per-request state and these have no ``validate``)."""
    if not isinstance(data, dict):
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data
    fields = _BOUND_FIELDS.get(serializer_class)
    if fields is None:
        fields = _BOUND_FIELDS.setdefault(serializer_class, serializer_class().fields)
    validated, errors = {}, {}
    for name, field in fields.items():
        try:
            validated[name] = field.run_validation(data.get(name, empty))
        except serializers.ValidationError as exc:
            errors[name] = exc.detail
        except SkipField:
            pass
    if errors:
        raise serializers.ValidationError(errors)
    return validated


def _payment_response(paid: devices.DevicePayment) -> Response:
    return Response(
        device_payment_body(paid),
        status=status.HTTP_201_CREATED if paid.result.created else status.HTTP_200_OK,
    )


_PAYMENT_RESPONSES = {
    201: DevicePaymentOut,
    200: OpenApiResponse(DevicePaymentOut, description=str(_("A repeat: the first payment."))),
    400: OpenApiResponse(description=str(_("Invalid amount, reference or closed account."))),
    401: OpenApiResponse(description=str(_("Wrong device credentials."))),
    404: OpenApiResponse(description=str(_("Unknown account."))),
    409: OpenApiResponse(description=str(_("The reference was used for another payment."))),
    429: OpenApiResponse(description=str(_("Too many failed sign-ins."))),
}


# --- terminal ------------------------------------------------------------------------------


class TerminalPaymentApi(_DeviceApi):
    permission_classes = [IsTerminal]

    @extend_schema(
        tags=["payments: terminal"],
        request=TerminalPaymentIn,
        responses=_PAYMENT_RESPONSES,
        description=str(_("Post a cash or card payment taken by a self-service terminal, once per txn_id.")),
    )
    def post(self, request):
        data = device_payment_input(TerminalPaymentIn, request.data)
        return _payment_response(devices.terminal_payment_post(device=request.auth, **data))


class TerminalAccountApi(_DeviceApi):
    permission_classes = [IsTerminal]

    @extend_schema(tags=["payments: terminal"], responses=DeviceAccountOut)
    def get(self, request, number):
        return Response(DeviceAccountOut(devices.device_account_info(account_number=number)).data)


# --- IVR -----------------------------------------------------------------------------------


class IvrBalanceApi(_DeviceApi):
    permission_classes = [IsIvr]

    @extend_schema(
        tags=["payments: IVR"],
        parameters=[OpenApiParameter("customer_number", str, required=True)],
        responses=IvrBalanceOut,
    )
    def get(self, request):
        query = IvrBalanceQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        customer, accounts = devices.ivr_customer_accounts(**query.validated_data)
        return Response(
            IvrBalanceOut(
                {
                    "customer_number": customer.number,
                    "customer_name": devices.mask_name(customer.name),
                    "accounts": accounts,
                }
            ).data
        )


class IvrPaymentApi(_DeviceApi):
    permission_classes = [IsIvr]

    @extend_schema(
        tags=["payments: IVR"],
        request=IvrPaymentIn,
        responses=_PAYMENT_RESPONSES,
        description=str(_("Post a bank-card payment taken by phone, once per call_id.")),
    )
    def post(self, request):
        data = device_payment_input(IvrPaymentIn, request.data)
        return _payment_response(devices.ivr_payment_post(device=request.auth, **data))


class IvrVoucherRedeemApi(_DeviceApi):
    permission_classes = [IsIvr]

    @extend_schema(
        tags=["payments: IVR"],
        request=IvrVoucherRedeemIn,
        responses={
            **_PAYMENT_RESPONSES,
            409: OpenApiResponse(description=str(_("The voucher was already redeemed."))),
            429: OpenApiResponse(description=str(_("Too many failed attempts for this caller or voucher."))),
        },
        description=str(_("Redeem a recharge voucher onto an account for a caller.")),
    )
    def post(self, request):
        data = IvrVoucherRedeemIn(data=request.data)
        data.is_valid(raise_exception=True)
        # Not atomic (no ATOMIC_REQUESTS): a failed attempt is committed before the error.
        return _payment_response(devices.ivr_voucher_redeem(device=request.auth, **data.validated_data))


# --- online payment ------------------------------------------------------------------------


class OnlineNotifyApi(APIView):
    """Server-to-server notification from a gateway; the signature is the authentication."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        tags=["payments: online"],
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            (200, "text/plain"): OpenApiResponse(
                OpenApiTypes.STR, description=str(_("Accepted (or a repeat)."))
            ),
            (400, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description=str(_("Rejected; logged."))),
        },
        auth=[],
        description=str(
            _(
                "A gateway's signed payment notification. Every notification is logged; bad "
                "signatures, stale or replayed ones, unknown orders and amount mismatches post nothing."
            )
        ),
    )
    def post(self, request, provider):
        notification = online.online_notification_receive(
            provider=provider,
            body=request.body,
            headers=request.headers,
            remote_addr=request.META.get("REMOTE_ADDR", ""),
        )
        body, content_type = online.notification_response(provider, notification)
        return HttpResponse(
            body,
            content_type=content_type,
            status=200 if getattr(notification, "acknowledge", False) else 400,
        )


class OnlineOrderApi(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        tags=["payments: online"],
        responses=OnlineOrderOut,
        description=str(
            _(
                "An online order's status for the portal (its own user) or staff: paid, the payment, "
                "and whether power was restored (restore.status = restored)."
            )
        ),
    )
    def get(self, request, order_no):
        order = online.online_order_for_user(user=request.user, order_no=order_no)
        restore = online.payment_restore_status(order.payment) if order.payment_id else None
        return Response(
            OnlineOrderOut(
                {
                    "order_no": order.order_no,
                    "provider": order.provider,
                    "status": online.order_display_status(order),
                    "amount": order.amount,
                    "account": order.account,
                    "created_at": order.created_at,
                    "expires_at": order.expires_at,
                    "paid_at": order.paid_at,
                    "payment_id": order.payment_id,
                    "restore": restore,
                }
            ).data
        )
