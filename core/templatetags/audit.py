from django import template

register = template.Library()

# Not shown in the audit views: a keyed digest is not for eyes, and bookkeeping columns
# change with every edit.
HIDDEN_FIELDS = frozenset({"id_number_digest", "version", "updated_at", "created_at"})


@register.filter
def audit_visible(mapping):
    """(field, value) pairs of an event's data or diff mapping, without hidden fields."""
    if not mapping:
        return []
    return [(k, v) for k, v in mapping.items() if k not in HIDDEN_FIELDS]
