from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self):
        # Metering must not import billing (DESIGN.md §3): rating listens to its hook.
        from metering.hooks import register_readings_listener

        register_readings_listener(_queue_rating)


def _queue_rating(batch_id: int) -> None:
    from billing.tasks import rate_batch_task

    rate_batch_task.delay(batch_id)
