"""Notification senders: how one channel hands a message to the outside world.

``settings.NOTIFICATION_SENDERS`` maps each channel to the dotted path of a class with a
``send(notification) -> provider_message_id`` method (the ``Sender`` protocol). The
delivery service (``core.services.notifications``) calls it with no database lock held and
records the outcome: a returned id means delivered; ``SendError`` (or any other exception)
means not delivered, retried with a backoff unless ``SendError.permanent`` says retrying
cannot help (e.g. the provider rejected the number).

A real SMS gateway is one more class with the same method, named in the environment
(``NOTIFICATION_SMS_SENDER=myproject.sms.AliyunSmsSender``); nothing else changes.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import structlog
from django.conf import settings
from django.core.mail import EmailMessage, make_msgid
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from core.models import Notification

logger = structlog.get_logger(__name__)


class SendError(Exception):
    """A sender could not deliver. ``permanent`` = retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@runtime_checkable
class Sender(Protocol):
    def send(self, notification: Notification) -> str:
        """Deliver the message; return the provider's message id (any non-empty string)."""
        ...


class ConsoleSmsSender:
    """Development and demo SMS: a structured log record and one printed line."""

    def send(self, notification: Notification) -> str:
        message_id = f"console-sms-{uuid.uuid4().hex[:12]}"
        logger.info(
            "sms_sent",
            notification=notification.pk,
            to=notification.recipient,
            topic=notification.topic,
            provider_message_id=message_id,
            body=notification.body,
        )
        print(f"[SMS → {notification.recipient}] {notification.body}", flush=True)  # noqa: T201
        return message_id


class DjangoEmailSender:
    """E-mail through ``django.core.mail`` (``EMAIL_BACKEND``; the console backend unless
    configured otherwise). The Message-ID header is the provider message id."""

    def send(self, notification: Notification) -> str:
        message_id = make_msgid(domain="kilowatt.local")
        message = EmailMessage(
            subject=notification.subject or notification.get_topic_display(),
            body=notification.body,
            to=[notification.recipient],
            headers={"Message-ID": message_id},
        )
        if message.send(fail_silently=False) != 1:
            raise SendError("the e-mail backend accepted no message")
        return message_id


class PortalSender:
    """Portal messages need no outside delivery: the portal lists the customer's
    notifications, so recording them as sent is the delivery."""

    def send(self, notification: Notification) -> str:
        return f"portal-{notification.pk}"


DEFAULT_SENDERS = {
    "sms": "core.notifications.ConsoleSmsSender",
    "email": "core.notifications.DjangoEmailSender",
    "portal": "core.notifications.PortalSender",
}


def sender_for(channel: str) -> Sender:
    """The configured sender of ``channel`` (an instance; one per dotted path)."""
    senders = {**DEFAULT_SENDERS, **(getattr(settings, "NOTIFICATION_SENDERS", None) or {})}
    try:
        path = senders[channel]
    except KeyError:
        raise SendError(f"no sender is configured for channel {channel!r}", permanent=True) from None
    return _load(path)


@lru_cache(maxsize=32)
def _load(path: str) -> Sender:
    sender = import_string(path)()
    if not isinstance(sender, Sender):
        raise TypeError(f"{path} has no send(notification) method")
    return sender
