"""What an online payment gateway looks like to the rest of the code.

A gateway (a real provider such as Alipay, WeChat Pay or UnionPay, or the built-in simulated
one) is reached through one ``GatewayAdapter`` subclass. The adapter knows the provider's
wire format and signature scheme and nothing about accounts or the ledger; the online
payment service (``payments.services.online``) does the business side: it creates the order,
asks the adapter where to send the customer, and hands every notification the provider
sends to ``parse_notification``, which either returns a verified ``Notification`` or raises
a ``GatewayError`` saying what was wrong (bad signature, malformed body).

Adding a real provider
----------------------
1. Write ``payments/gateways/<provider>.py`` with a ``GatewayAdapter`` subclass:
   - ``name``: the short name used in URLs and stored on orders (``"alipay"``);
   - ``create_payment(order)``: call the provider's "create order / precreate" API (or build
     its signed redirect URL) for ``order.order_no`` and ``order.amount`` with our notify URL
     ``/api/v1/payments/online/<name>/notify`` and return the URL the customer is sent to;
   - ``parse_notification(body, headers)``: verify the provider's signature over the raw body
     (RSA2 for Alipay, HMAC/RSA for WeChat Pay v3 with its timestamp and nonce headers,
     certificate signatures for UnionPay) and map its fields to ``Notification``. Anything
     unsigned or unparseable raises ``BadSignature`` / ``MalformedNotification``; the provider's
     own notification id is the ``nonce`` (it is unique per accepted notification), its
     payment time the ``timestamp``;
   - ``success_response`` / ``failure_response``: the body the provider expects back (Alipay
     wants ``success``; WeChat Pay a JSON ``{"code": "SUCCESS"}``).
2. Register it: ``PAYMENT_GATEWAYS`` in settings maps names to dotted class paths; extra
   providers are added from the environment (``PAYMENT_GATEWAYS_EXTRA=alipay=payments.gateways
   .alipay.AlipayGateway``). Keys and certificates come from the environment, never the repo.
3. Nothing else changes: the notify endpoint, replay and amount checks, logging of every
   notification and the posting are the service's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from core.exceptions import NotFound


class NotificationStatus:
    PAID = "paid"
    FAILED = "failed"  # the customer cancelled or the provider declined


@dataclass(frozen=True)
class Notification:
    """A verified notification: the provider says order ``order_no`` was paid (or failed)."""

    order_no: str
    amount: Decimal
    provider_txn_id: str
    nonce: str
    timestamp: datetime  # aware; when the provider sent it
    status: str  # NotificationStatus


class GatewayError(Exception):
    """A notification that cannot be trusted or read; ``outcome`` is the GatewayNotification
    outcome it is logged with. ``order_no`` / ``nonce`` are filled when they could be read."""

    outcome = "malformed"

    def __init__(self, message: str, *, order_no: str = "", nonce: str = ""):
        super().__init__(message)
        self.message = message
        self.order_no = order_no
        self.nonce = nonce


class BadSignature(GatewayError):
    outcome = "bad_signature"


class MalformedNotification(GatewayError):
    outcome = "malformed"


class GatewayAdapter(ABC):
    name: str = ""
    success_response: tuple[str, str] = ("success", "text/plain")  # (body, content type)
    failure_response: tuple[str, str] = ("fail", "text/plain")

    @abstractmethod
    def create_payment(self, order) -> str:
        """Where to send the customer to pay ``order`` (a GatewayOrder)."""

    @abstractmethod
    def parse_notification(self, request_body: bytes, headers: Mapping[str, str]) -> Notification:
        """Verify and read a server-to-server notification; GatewayError if it cannot be trusted."""


def header(headers: Mapping[str, str], name: str) -> str:
    """A header by name, whatever its case (Django's request.headers or a plain dict)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value or ""


def gateway_names() -> list[str]:
    return list(getattr(settings, "PAYMENT_GATEWAYS", {}))


def get_gateway(name: str) -> GatewayAdapter:
    """The adapter registered as ``name`` in ``settings.PAYMENT_GATEWAYS``; NotFound otherwise."""
    path = getattr(settings, "PAYMENT_GATEWAYS", {}).get(name)
    if not path:
        raise NotFound(_("No online payment gateway %(name)s.") % {"name": name}, code="unknown_gateway")
    adapter = import_string(path)()
    if adapter.name != name:
        raise ValueError(f"PAYMENT_GATEWAYS[{name!r}] is registered under another name ({adapter.name!r})")
    return adapter
