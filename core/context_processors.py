from core.models import Role
from core.permissions import Cap, actor_for


def staff(request):
    actor = actor_for(getattr(request, "user", None))
    return {
        "actor": actor,
        "actor_role_label": Role(actor.role).label if actor else "",
        "can_create_customer": bool(actor and actor.has(Cap.CUSTOMER_CREATE)),
        "can_view_audit": bool(actor and actor.has(Cap.AUDIT_VIEW)),
        "can_view_meters": bool(actor and actor.has(Cap.METER_VIEW)),
        "can_view_collection": bool(actor and actor.has(Cap.COLLECTION_VIEW)),
        "can_view_billing": bool(actor and actor.has(Cap.LEDGER_VIEW)),
        "can_approve_adjustments": bool(actor and actor.has(Cap.ADJUSTMENT_APPROVE)),
        "can_take_payments": bool(actor and actor.has(Cap.PAYMENT_TAKE)),
        "can_view_payments": bool(actor and actor.has(Cap.PAYMENT_VIEW)),
        "can_manage_vouchers": bool(actor and actor.has(Cap.VOUCHER_MANAGE)),
        "can_approve_reversals": bool(actor and actor.has(Cap.REVERSAL_APPROVE)),
        "can_reconcile_bank": bool(actor and actor.has(Cap.BANK_RECONCILE)),
        "can_refund": bool(actor and actor.has(Cap.REFUND)),
    }
