from portal.access import is_portal_user
from portal.selectors import portal_unread_count


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
