"""The demo utility's payment channels: agency banks, a self-service terminal and the phone
system (their secrets printed once, as `manage.py payment_device_create` does), and a batch of
recharge vouchers."""

from __future__ import annotations

from core.models import OrgUnit
from payments.models import Bank
from payments.services.devices import device_create

BANKS = [
    ("QXRCB", "青溪农村商业银行"),
    ("ICBC-QX", "中国工商银行青溪支行"),
    ("CCB-BS", "中国建设银行白石支行"),
]


def build(log=print) -> None:
    Bank.objects.bulk_create([Bank(code=c, name=n) for c, n in BANKS])
    hall = OrgUnit.objects.filter(kind="hall", code__startswith="QX").order_by("code").first()
    if hall is None:
        return
    _device, terminal_secret = device_create(code="QX-T01", kind="terminal", hall_code=hall.code)
    _device, ivr_secret = device_create(code="IVR-95598", kind="ivr", hall_code=hall.code)
    log(f"payment channels: {len(BANKS)} agency banks; terminal QX-T01 and IVR IVR-95598")
    log(f"  API credentials (shown once): 'Device QX-T01:{terminal_secret}', 'Device IVR-95598:{ivr_secret}'")
