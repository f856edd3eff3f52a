"""Online payment gateway adapters (see base.py for how to add a provider)."""

from payments.gateways.base import (
    BadSignature,
    GatewayAdapter,
    GatewayError,
    MalformedNotification,
    Notification,
    NotificationStatus,
    gateway_names,
    get_gateway,
)

__all__ = [
    "BadSignature",
    "GatewayAdapter",
    "GatewayError",
    "MalformedNotification",
    "Notification",
    "NotificationStatus",
    "gateway_names",
    "get_gateway",
]
