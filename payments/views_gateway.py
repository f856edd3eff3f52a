"""The simulated gateway's cashier page (/payments/online/sim/pay/<order_no>/).

It stands in for a real provider's hosted page: the customer, sent here by the portal, sees
the order and presses Pay or Cancel; the simulated gateway then sends its signed
notification (in process, through the same ``online_notification_receive`` the notify
endpoint calls, so it passes the same signature, freshness, replay and amount checks) and
sends the customer back to the order's return address. No sign-in: a provider's page knows
nothing of our users; the order number (48 random bits) is what the customer holds.
"""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from core.exceptions import NotFound
from payments.gateways import NotificationStatus, get_gateway
from payments.models import GatewayOrder
from payments.services.devices import mask_name
from payments.services.online import (
    online_notification_receive,
    online_order_get,
    order_display_status,
    payment_restore_status,
)

SIM = "sim"


def _back_to_merchant(request, order: GatewayOrder):
    url = order.return_url
    if url and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}):
        return redirect(f"{url}{'&' if '?' in url else '?'}order_no={order.order_no}")
    return redirect("payments:online-sim-pay", order.order_no)


@require_http_methods(["GET", "POST"])
def sim_cashier(request, order_no):
    gateway = get_gateway(SIM)  # 404 where the simulated gateway is switched off
    order = online_order_get(order_no)
    if order.provider != SIM:
        raise NotFound(_("No online payment order %(no)s.") % {"no": order_no})
    if request.method == "POST":
        action = request.POST.get("action")
        if action not in ("pay", "cancel"):
            messages.error(request, _("Choose Pay or Cancel."))
        elif order_display_status(order) != GatewayOrder.Status.CREATED:
            messages.error(request, _("This order can no longer be paid."))
        else:
            body, headers = gateway.notification_for(
                order, status=NotificationStatus.PAID if action == "pay" else NotificationStatus.FAILED
            )
            notification = online_notification_receive(
                provider=SIM, body=body, headers=headers, remote_addr="sim-cashier"
            )
            if getattr(notification, "acknowledge", False):
                return _back_to_merchant(request, order)
            messages.error(
                request,
                _("The payment could not be completed (%(why)s).") % {"why": notification.detail},
            )
        return redirect("payments:online-sim-pay", order.order_no)
    status = order_display_status(order)
    context = {
        "order": order,
        "status": status,
        "status_label": GatewayOrder.Status(status).label,
        "customer_name": mask_name(order.account.customer.name),
        "payable": status == GatewayOrder.Status.CREATED,
        "restore": payment_restore_status(order.payment) if order.payment_id else None,
    }
    return render(request, "payments/gateway/sim_cashier.html", context)
