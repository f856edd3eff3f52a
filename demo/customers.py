"""Builds the demo utility's org tree, staff, transformer areas and customer register.

Bulk inserts in batches keep 200,000 customers within minutes; everything is drawn from
one seeded random generator, so the same seed gives the same utility.
"""

import random
from datetime import date, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from faker import Faker

from core.models import OrgUnit, OrgUnitKind, StaffProfile, TransformerArea
from customers.models import (
    Account,
    Contact,
    ContactRole,
    Customer,
    CustomerCategory,
    IdType,
    ImportanceGrade,
    ServicePoint,
    SettlementMode,
    VoltageLevel,
)
from customers.services.customers import (
    allocate_customer_numbers,
    allocate_service_point_numbers,
    identity_digest,
    mask_identity,
)
from customers.validators import resident_id_check_char
from demo.org import COUNTY_DIVISION, DEMO_PASSWORD, DEMO_USERS, ORG_TREE, STATION_PLACES

BATCH = 5000
CUSTOMERS_PER_AREA = 150
MOBILE_PREFIXES = (
    "130",
    "131",
    "132",
    "133",
    "135",
    "136",
    "137",
    "138",
    "139",
    "150",
    "151",
    "152",
    "153",
    "155",
    "157",
    "158",
    "159",
    "177",
    "180",
    "181",
    "182",
    "183",
    "186",
    "187",
    "188",
    "189",
    "199",
)
CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)

# Category mix of a county company: mostly households, few large industrial users.
CATEGORY_WEIGHTS = (
    (CustomerCategory.RESIDENTIAL, 0.86),
    (CustomerCategory.COMMERCIAL, 0.09),
    (CustomerCategory.AGRICULTURE, 0.04),
    (CustomerCategory.LARGE_INDUSTRY, 0.01),
)
PROTECTED_KINDS = ("县人民医院", "第一中学", "自来水厂", "应急管理局", "中心卫生院", "通信枢纽站")


def build_org() -> dict[str, OrgUnit]:
    units = {}

    def add(parent, node):
        code, name, kind, children = node
        if parent is None:
            unit = OrgUnit.objects.add_root(dict(code=code, name=name, kind=kind))
        else:
            unit = OrgUnit.objects.add_child(parent, dict(code=code, name=name, kind=kind))
        units[code] = unit
        for child in children:
            add(unit, child)
            unit.refresh_from_db()

    add(None, ORG_TREE)
    return units


def build_users(units: dict[str, OrgUnit]) -> None:
    User = get_user_model()
    for demo in DEMO_USERS:
        user = User(
            username=demo.username,
            first_name=demo.full_name,
            is_staff=demo.role == "admin",
            is_superuser=demo.role == "admin",
        )
        user.set_password(DEMO_PASSWORD)
        user.save()
        StaffProfile.objects.create(user=user, role=demo.role, org_unit=units[demo.org_unit])


def build_areas(rng: random.Random, units: dict[str, OrgUnit], customers: int) -> list[TransformerArea]:
    stations = [u for u in units.values() if u.kind == OrgUnitKind.STATION]
    per_station = max(2, -(-customers // (CUSTOMERS_PER_AREA * len(stations))))
    areas = []
    for station in stations:
        town, places = STATION_PLACES[station.code]
        for i in range(1, per_station + 1):
            place = places[(i - 1) % len(places)]
            areas.append(
                TransformerArea(
                    code=f"{station.code}-T{i:04d}",
                    name=f"{place}{(i - 1) // len(places) + 1}号台区",
                    supply_station=station,
                    transformer_capacity_kva=Decimal(rng.choice((630, 800, 1000, 1250))),
                )
            )
    return TransformerArea.objects.bulk_create(areas, batch_size=BATCH)


def _resident_id(rng: random.Random, division: str) -> str:
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 62))
    first17 = f"{division}{born:%Y%m%d}{rng.randrange(0, 1000):03d}"
    return first17 + resident_id_check_char(first17)


def _credit_code(rng: random.Random, division: str) -> str:
    body = "91" + division + "".join(rng.choice(CREDIT_CHARS) for _ in range(9))
    total = sum(CREDIT_CHARS.index(c) * w for c, w in zip(body, CREDIT_WEIGHTS, strict=True))
    return body + CREDIT_CHARS[(31 - total % 31) % 31]


def _mobile(rng: random.Random) -> str:
    return f"+86{rng.choice(MOBILE_PREFIXES)}{rng.randrange(0, 10**8):08d}"


def build_customers(
    rng: random.Random, fake: Faker, areas: list[TransformerArea], count: int, today: date
) -> int:
    categories = [c for c, _ in CATEGORY_WEIGHTS]
    weights = [w for _, w in CATEGORY_WEIGHTS]
    stations = {a.supply_station_id: a.supply_station for a in areas}
    county_of = {sid: OrgUnit.objects.get_parent(OrgUnit.objects.get(pk=sid)).code for sid in stations}
    customer_numbers = iter(allocate_customer_numbers(count))
    sp_numbers = iter(allocate_service_point_numbers(count))
    protected_left = max(3, count // 500)
    made = 0
    while made < count:
        n = min(BATCH, count - made)
        batch_customers, plans = [], []
        for _ in range(n):
            area = rng.choice(areas)
            station = stations[area.supply_station_id]
            town, places = STATION_PLACES[station.code]
            place = rng.choice(places)
            division = COUNTY_DIVISION[county_of[station.pk]]
            category = rng.choices(categories, weights)[0]
            importance = ImportanceGrade.ORDINARY
            protected, protected_reason = False, ""
            if category == CustomerCategory.RESIDENTIAL:
                name = fake.name()
                address = f"{town}{place}{rng.randrange(1, 300)}号"
                voltage = VoltageLevel.V220 if rng.random() < 0.93 else VoltageLevel.V380
                capacity = Decimal(rng.choice((4, 6, 8, 10, 12)))
                id_type, id_number = IdType.RESIDENT_ID, _resident_id(rng, division)
                ct = pt = 1
                mode = SettlementMode.PREPAID
            elif category == CustomerCategory.AGRICULTURE:
                name = f"{place}{rng.choice(('排灌站', '农业合作社', '养殖场', '茶厂', '粮食烘干点'))}"
                address = f"{town}{place}{rng.randrange(1, 50)}号"
                voltage = VoltageLevel.V380
                capacity = Decimal(rng.choice((20, 30, 50, 80, 100)))
                id_type, id_number = IdType.CREDIT_CODE, _credit_code(rng, division)
                ct, pt = rng.choice(((1, 1), (20, 1), (30, 1))), 1
                ct = ct[0]
                mode = SettlementMode.PREPAID
            else:
                name = fake.company()
                address = f"{town}{place}{rng.randrange(1, 500)}号"
                id_type, id_number = IdType.CREDIT_CODE, _credit_code(rng, division)
                if category == CustomerCategory.COMMERCIAL:
                    voltage = VoltageLevel.V380 if rng.random() < 0.85 else VoltageLevel.KV10
                    capacity = Decimal(rng.choice((30, 50, 80, 100, 160, 250)))
                    ct, pt = (rng.choice((20, 40, 60)), 1) if voltage == VoltageLevel.V380 else (20, 100)
                    mode = SettlementMode.PREPAID if rng.random() < 0.7 else SettlementMode.POSTPAID
                else:
                    voltage = rng.choice((VoltageLevel.KV10, VoltageLevel.KV10, VoltageLevel.KV35))
                    capacity = Decimal(rng.choice((315, 400, 630, 800, 1250, 2000, 3150)))
                    ct, pt = rng.choice((20, 40, 60, 100)), (100 if voltage == VoltageLevel.KV10 else 350)
                    mode = SettlementMode.POSTPAID
                    importance = rng.choice((ImportanceGrade.ORDINARY, ImportanceGrade.GRADE2))
            if protected_left and category == CustomerCategory.COMMERCIAL and rng.random() < 0.15:
                protected_left -= 1
                name = (
                    f"{town.replace('青溪县', '青溪').replace('白石县', '白石')}{rng.choice(PROTECTED_KINDS)}"
                )
                importance = rng.choice((ImportanceGrade.GRADE1, ImportanceGrade.GRADE2))
                protected, protected_reason = True, "重要用户：医疗/教育/供水/应急"
            number = str(next(customer_numbers))
            batch_customers.append(
                Customer(
                    number=number,
                    name=name,
                    id_type=id_type,
                    id_number_masked=mask_identity(id_type, id_number),
                    id_number_digest=identity_digest(id_type, id_number),
                    mobile_phone=_mobile(rng),
                    address=address,
                    category=category,
                    voltage_level=voltage,
                    contracted_capacity_kva=capacity,
                    importance_grade=importance,
                    protected=protected,
                    protected_reason=protected_reason,
                    org_unit_id=station.pk,
                )
            )
            opened = today - timedelta(days=rng.randrange(30, 365 * 12))
            plans.append((mode, opened, area, address, ct, pt))
        with transaction.atomic():
            created = Customer.objects.bulk_create(batch_customers, batch_size=BATCH)
            accounts = Account.objects.bulk_create(
                [
                    Account(number=f"{c.number}01", customer=c, settlement_mode=plan[0], opened_on=plan[1])
                    for c, plan in zip(created, plans, strict=True)
                ],
                batch_size=BATCH,
            )
            ServicePoint.objects.bulk_create(
                [
                    ServicePoint(
                        number=str(next(sp_numbers)),
                        customer=c,
                        account=a,
                        address=plan[3],
                        transformer_area=plan[2],
                        ct_ratio=plan[4],
                        pt_ratio=plan[5],
                    )
                    for c, a, plan in zip(created, accounts, plans, strict=True)
                ],
                batch_size=BATCH,
            )
            Contact.objects.bulk_create(
                [
                    Contact(
                        customer=c,
                        name=c.name if c.category == CustomerCategory.RESIDENTIAL else fake.name(),
                        role=ContactRole.OWNER,
                        phone=c.mobile_phone,
                    )
                    for c in created
                ],
                batch_size=BATCH,
            )
        made += n
    return made


def build(*, customers: int, seed: int, today: date, log=print) -> None:
    rng = random.Random(seed)
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    # No audit context here on purpose: pghistory upserts its context row once per
    # changed row, which turns a bulk load of many rows in one transaction quadratic.
    # The insert events are still recorded, with no actor: that is what a data load is.
    with transaction.atomic():
        units = build_org()
        build_users(units)
        areas = build_areas(rng, units, customers)
    log(f"org units: {len(units)}, transformer areas: {len(areas)}, users: {len(DEMO_USERS)}")
    made = build_customers(rng, fake, areas, customers, today)
    log(f"customers: {made} (with accounts, service points and owner contacts)")
