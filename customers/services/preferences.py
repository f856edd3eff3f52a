"""How a customer wants to hear from the utility, as chosen by the customer in the portal.

Portal messages always go out; SMS and e-mail are the customer's choice
(``Customer.notify_by_sms`` / ``notify_by_email``, read by the cost-control policy when it
queues a notice). The change is a change to a customer record, so it runs in an audit
context (pghistory records the before/after diff of the row) naming the portal user who
made it. The customer's ``version`` is not moved on: a staff edit form in progress does not
show these fields and must not be refused because of them.
"""

from django.db import transaction
from django.utils.translation import gettext as _

from core.audit import audit_context
from core.exceptions import NotFound, ValidationError
from customers.models import Customer


@transaction.atomic
def customer_notification_preferences_set(
    *, customer: Customer, by_sms: bool, by_email: bool, changed_by_user_id: int | None
) -> Customer:
    """Set whether notices also go by SMS and by e-mail; returns the updated customer.

    E-mail cannot be switched on without an address on record (nothing could be sent); a
    choice already stored is kept as it is, so that it takes effect once an address is added."""
    if not isinstance(by_sms, bool) or not isinstance(by_email, bool):
        raise ValidationError(_("Choose yes or no for each way of being notified."))
    locked = Customer.objects.select_for_update().filter(pk=customer.pk).first()
    if locked is None:
        raise NotFound(_("No such customer."))
    if by_email and not locked.notify_by_email and not locked.email:
        raise ValidationError(
            _("There is no e-mail address on record for this customer; notices cannot be sent by e-mail."),
            field_errors={"by_email": [_("No e-mail address on record.")]},
            code="no_email",
        )
    values = {"notify_by_sms": by_sms, "notify_by_email": by_email}
    changed = [field for field, value in values.items() if getattr(locked, field) != value]
    if not changed:
        return locked
    with audit_context(action="customer.notification_preferences", user=changed_by_user_id, via="portal"):
        for field in changed:
            setattr(locked, field, values[field])
        locked.save(update_fields=[*changed, "updated_at"])
    return locked
