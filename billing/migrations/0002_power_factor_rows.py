"""Load the 1983 power-factor adjustment tables (every printed row) as data."""

from django.db import migrations


def load(apps, schema_editor):
    from billing.rating.power_factor import POWER_FACTOR_ROWS

    Row = apps.get_model("billing", "PowerFactorRow")
    Row.objects.bulk_create(
        [
            Row(standard=f"{standard:.2f}", power_factor=pf, adjustment_percent=percent)
            for standard, pf, percent in POWER_FACTOR_ROWS
        ],
        ignore_conflicts=True,
    )


def unload(apps, schema_editor):
    apps.get_model("billing", "PowerFactorRow").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(load, unload)]
