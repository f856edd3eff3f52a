from portal.access import is_portal_user


def portal(request):
    """``portal_user``: the signed-in user is a portal customer (for the portal's base page)."""
    path = request.path
    if not path.startswith("/portal/"):
        return {}
    user = getattr(request, "user", None)
    return {"portal_user": is_portal_user(user)}
