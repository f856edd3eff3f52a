from customers.services.customers import (  # noqa: F401
    account_close,
    account_open,
    contact_add,
    contact_remove,
    customer_create,
    customer_update,
    identity_digest,
    mask_identity,
    service_point_add,
)
