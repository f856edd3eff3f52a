"""Who hears about stored readings, without metering importing them (DESIGN.md §3).

Billing (rating) sits to the right of metering and must not be imported from here. It
registers a listener at start-up instead (e.g. in its ``AppConfig.ready``)::

    from metering.hooks import register_readings_listener
    register_readings_listener(lambda batch_id: rate_batch_task.delay(batch_id))

``readings_ingest`` calls ``notify_readings_stored(batch_id)`` through
``transaction.on_commit`` once a batch with accepted readings has been stored completely,
so a listener never sees a batch that could still roll back. Listeners should be quick
(queue a task); one that raises is logged and does not stop the others.
"""

from collections.abc import Callable

import structlog

logger = structlog.get_logger(__name__)

ReadingsListener = Callable[[int], None]

_listeners: list[ReadingsListener] = []


def register_readings_listener(func: ReadingsListener) -> ReadingsListener:
    """Add ``func(batch_id)`` to the listeners (once); usable as a decorator."""
    if func not in _listeners:
        _listeners.append(func)
    return func


def unregister_readings_listener(func: ReadingsListener) -> None:
    if func in _listeners:
        _listeners.remove(func)


def notify_readings_stored(batch_id: int) -> None:
    for listener in list(_listeners):
        try:
            listener(batch_id)
        except Exception:
            # The readings are committed; a listener's failure must not turn that into an
            # error for whoever delivered them. The listener can catch up from the batch id.
            logger.exception("readings_listener_failed", batch_id=batch_id, listener=repr(listener))
