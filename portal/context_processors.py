from datetime import UTC, datetime

from django.db.models import DateTimeField, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from core.models import Notification, NotificationChannel
from portal.access import is_portal_user
from portal.models import AccountBinding, PortalProfile

_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def portal_messages_for(user_id: int) -> QuerySet[Notification]:
    """The portal messages a portal user may read: those for the customers of their bound
    accounts, about one of those accounts or about the customer as a whole (a customer's other,
    unbound accounts stay private)."""
    bindings = AccountBinding.objects.filter(user_id=user_id)
    return Notification.objects.filter(
        channel=NotificationChannel.PORTAL,
        customer_id__in=bindings.values("account__customer_id"),
    ).filter(Q(account_id__isnull=True) | Q(account_id__in=bindings.values("account_id")))


def portal_unread_count(user_id: int) -> int:
    """Messages newer than the user last read up to: one query (the read mark is a subquery)."""
    seen = PortalProfile.objects.filter(user_id=user_id).values("messages_seen_at")[:1]
    return (
        portal_messages_for(user_id)
        .filter(created_at__gt=Coalesce(Subquery(seen), Value(_NEVER), output_field=DateTimeField()))
        .count()
    )


def portal(request):
    """``portal_user``: the signed-in user is a portal customer (for the portal's base page);
    ``portal_unread``: how many of their portal messages are unread (the nav's badge)."""
    path = request.path
    if not path.startswith("/portal/"):
        return {}
    user = getattr(request, "user", None)
    is_customer = is_portal_user(user)
    return {
        "portal_user": is_customer,
        "portal_unread": portal_unread_count(user.pk) if is_customer else 0,
    }
