from django.db import transaction

from core.models import Sequence


@transaction.atomic
def sequence_allocate(*, name: str, count: int = 1, start: int = 1) -> range:
    """Reserve ``count`` consecutive values of the named sequence and return them."""
    if count < 1:
        raise ValueError("count must be at least 1")
    Sequence.objects.get_or_create(name=name, defaults={"last_value": start - 1})
    seq = Sequence.objects.select_for_update().get(name=name)
    first = seq.last_value + 1
    seq.last_value += count
    seq.save(update_fields=["last_value"])
    return range(first, first + count)


def sequence_next(*, name: str, start: int = 1) -> int:
    return sequence_allocate(name=name, count=1, start=start)[0]
