"""The built-in simulated gateway ("sim"), so the demo and the tests can pay end to end.

It plays both sides of a real provider: a cashier page (``payments.views_gateway``) where
the customer presses Pay or Cancel, and the server-to-server notification the provider then
sends to our notify endpoint. The notification is signed like a real one, so it goes through
the same checks as a real provider's would:

- body: JSON ``{"order_no", "amount" ("50.00", a string), "txn_id", "nonce", "timestamp"
  (Unix seconds), "status" ("paid" | "failed")}``;
- signature: HMAC-SHA256, hex, over the canonical string
  ``order_no|amount|txn_id|nonce|timestamp|status``, keyed with ``settings.PAYMENT_SIM_SECRET``
  (from the environment; by default derived from SECRET_KEY), in header ``X-Sim-Signature``.

The simulated gateway takes no money: production turns it off (``PAYMENT_SIM_GATEWAY=false``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from payments.gateways.base import (
    BadSignature,
    GatewayAdapter,
    MalformedNotification,
    Notification,
    NotificationStatus,
    header,
)

SIGNATURE_HEADER = "X-Sim-Signature"
_FIELDS = ("order_no", "amount", "txn_id", "nonce", "timestamp", "status")
_AMOUNT = re.compile(r"^\d{1,12}\.\d{2}$")
_TOKEN = re.compile(r"^[0-9A-Za-z_\-]{1,64}$")


def _secret() -> bytes:
    return str(settings.PAYMENT_SIM_SECRET).encode()


def canonical(fields: Mapping) -> str:
    return "|".join(str(fields[name]) for name in _FIELDS)


def sign(fields: Mapping) -> str:
    return hmac.new(_secret(), canonical(fields).encode(), hashlib.sha256).hexdigest()


class SimulatedGateway(GatewayAdapter):
    name = "sim"

    def create_payment(self, order) -> str:
        return reverse("payments:online-sim-pay", args=[order.order_no])

    def notification_for(
        self,
        order,
        *,
        status: str = NotificationStatus.PAID,
        amount: Decimal | str | None = None,
        txn_id: str | None = None,
        nonce: str | None = None,
        timestamp: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The signed notification this gateway sends for ``order``: (body, headers). The
        keyword arguments let tests build replays, stale and tampered ones."""
        fields = {
            "order_no": order.order_no,
            "amount": f"{Decimal(amount if amount is not None else order.amount):.2f}",
            "txn_id": txn_id or f"SIM{secrets.token_hex(8).upper()}",
            "nonce": nonce or secrets.token_hex(16),
            "timestamp": int((timestamp or timezone.now()).timestamp()),
            "status": status,
        }
        body = json.dumps(fields, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(fields)}

    def parse_notification(self, request_body: bytes, headers: Mapping[str, str]) -> Notification:
        try:
            data = json.loads(request_body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise MalformedNotification("body is not JSON") from None
        if not isinstance(data, dict):
            raise MalformedNotification("body is not a JSON object")
        order_no = data.get("order_no") if isinstance(data.get("order_no"), str) else ""
        nonce = data.get("nonce") if isinstance(data.get("nonce"), str) else ""
        ids = {"order_no": order_no[:40], "nonce": nonce[:64]}
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise MalformedNotification(f"missing {', '.join(missing)}", **ids)
        if (
            not all(isinstance(data[n], str) for n in _FIELDS if n != "timestamp")
            or type(data["timestamp"]) is not int
        ):
            raise MalformedNotification("a field has the wrong type", **ids)
        given = header(headers, SIGNATURE_HEADER)
        if not given:
            raise BadSignature("no signature", **ids)
        if not hmac.compare_digest(sign(data).encode(), given.strip().lower().encode()):
            raise BadSignature("signature does not match", **ids)
        # Signed by the gateway from here on; still check the shapes we rely on.
        if not _AMOUNT.match(data["amount"]):
            raise MalformedNotification("amount is not yuan with two decimals", **ids)
        if not (_TOKEN.match(data["order_no"]) and _TOKEN.match(data["txn_id"]) and _TOKEN.match(nonce)):
            raise MalformedNotification("order_no, txn_id or nonce has bad characters", **ids)
        if data["status"] not in (NotificationStatus.PAID, NotificationStatus.FAILED):
            raise MalformedNotification("unknown status", **ids)
        try:
            sent_at = datetime.fromtimestamp(data["timestamp"], tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise MalformedNotification("timestamp out of range", **ids) from None
        return Notification(
            order_no=data["order_no"],
            amount=Decimal(data["amount"]),
            provider_txn_id=data["txn_id"],
            nonce=nonce,
            timestamp=sent_at,
            status=data["status"],
        )
