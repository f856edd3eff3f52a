"""The bank reconciliation pages through the Django test client (the sample day of
test_bank.py: 3 matched, 1 long, 1 short, 1 mismatch)."""

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from payments.models import BankFile, ReconciliationItem
from tests.payments import test_bank as sample_day
from tests.payments.test_bank import SAMPLE, import_sample

# The sample day's fixtures (banks, the three accounts, the real-time postings).
banks, accounts, the_day = sample_day.banks, sample_day.accounts, sample_day.the_day

pytestmark = [pytest.mark.usefixtures("english", "fast_password_hashing"), pytest.mark.django_db]

LIST = "/payments/bank/"
REPORT = "/payments/bank/files/QXRCB/2026-11-20/"
CSV = REPORT + "report.csv"
Kind = ReconciliationItem.Kind


@pytest.fixture
def login(client, staff):
    def login(name):
        client.force_login(staff[name])
        return client

    return login


def upload(client, content=None, business_date="2026-11-20"):
    content = SAMPLE.read_bytes() if content is None else content
    return client.post(
        LIST,
        {
            "bank": "QXRCB",
            "business_date": business_date,
            "file": SimpleUploadedFile(SAMPLE.name, content, content_type="text/csv"),
        },
    )


def test_import_through_the_page_shows_the_report(the_day, login):
    client = login("manager")
    response = upload(client)
    assert response.status_code == 302 and response["Location"] == REPORT
    html = client.get(REPORT).content.decode()
    # Hand-computed, as in test_bank.py: matched 3 / 350.50, long 1 / 30.00, short 1 / 45.60,
    # mismatch 1 / 80.00 vs 75.00; file 460.50, posted 471.10, difference -10.60, 3 open.
    for testid, value in [
        ("count-matched", "3"),
        ("count-long", "1"),
        ("count-short", "1"),
        ("count-mismatch", "1"),
        ("file-matched", "350.50"),
        ("file-long", "30.00"),
        ("posted-short", "45.60"),
        ("file-mismatch", "80.00"),
        ("posted-mismatch", "75.00"),
        ("file-total", "460.50"),
        ("posted-total", "471.10"),
        ("difference", "-10.60"),
        ("open-count", "3"),
    ]:
        assert f'data-testid="{testid}">{value}<' in html, testid
    assert "Post it now" in html
    # The list shows the file with its open items.
    listing = client.get(LIST).content.decode()
    assert "2026-11-20" in listing and "bank_QXRCB_2026-11-20.csv" in listing


def test_reimport_through_the_page_changes_nothing(the_day, login):
    client = login("manager")
    upload(client)
    response = upload(client)
    assert response.status_code == 302
    assert BankFile.objects.count() == 1 and ReconciliationItem.objects.count() == 6


def test_a_bad_file_shows_the_line_on_the_form(the_day, login):
    content = SAMPLE.read_bytes().replace(b"TOTAL,5,460.50", b"TOTAL,5,460.00")
    response = upload(login("manager"), content)
    assert response.status_code == 200
    assert (
        "line 7: the trailer sum 460.00 differs from the sum of the lines, 460.50"
        in response.content.decode()
    )
    assert not BankFile.objects.exists()


def test_csv_export_of_the_report(the_day, login, actors):
    import_sample(actors["manager"])
    response = login("auditor").get(CSV)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert (
        response["Content-Disposition"] == 'attachment; filename="bank-reconciliation-QXRCB-2026-11-20.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    # rows: file header, file, blank, summary header, 4 kinds, file/posted totals, difference,
    # blank, items header, items.
    assert rows[3] == ["kind", "count", "file_amount", "posted_amount", "open"]
    summary = {r[0]: r[1:] for r in rows[4:11]}
    assert summary["matched"] == ["3", "350.50", "350.50", "0"]
    assert summary["long"] == ["1", "30.00", "0.00", "1"]
    assert summary["short"] == ["1", "0.00", "45.60", "1"]
    assert summary["mismatch"] == ["1", "80.00", "75.00", "1"]
    assert summary["file_total"][:2] == ["5", "460.50"]
    assert summary["posted_total"][:3] == ["5", "", "471.10"]
    assert summary["difference"] == ["", "-10.60", "", "3"]
    items = list(csv.DictReader(io.StringIO("\n".join(",".join(r) for r in rows[12:]))))
    assert len(items) == 6
    assert {(i["kind"], i["bank_serial"]) for i in items if i["kind"] != "matched"} == {
        ("long", "S0004"),
        ("short", "S0006"),
        ("mismatch", "S0005"),
    }


def test_post_and_clear_through_the_pages(the_day, login, actors):
    bank_file = import_sample(actors["manager"])
    client = login("manager")
    long_item = bank_file.items.get(kind=Kind.LONG)
    response = client.post(f"/payments/bank/items/{long_item.pk}/post/")
    assert response.status_code == 302 and response["Location"] == REPORT
    long_item.refresh_from_db()
    assert long_item.cleared and long_item.payment.external_id == "QXRCB:S0004"
    short = bank_file.items.get(kind=Kind.SHORT)
    client.post(f"/payments/bank/items/{short.pk}/clear/", {"note": "In the bank's next file"})
    short.refresh_from_db()
    assert short.cleared and short.clearing_note == "In the bank's next file"
    html = client.get(REPORT).content.decode()
    assert 'data-testid="open-count">1<' in html  # the mismatch is left


@pytest.mark.parametrize("name", ["inspector", "counter"])
def test_pages_are_forbidden_without_the_role(the_day, login, actors, name):
    bank_file = import_sample(actors["manager"])
    client = login(name)
    for url in (LIST, REPORT, CSV):
        assert client.get(url).status_code == 403, url
    assert upload(client).status_code == 403
    mismatch = bank_file.items.get(kind=Kind.MISMATCH)
    assert (
        client.post(f"/payments/bank/items/{mismatch.pk}/clear/", {"note": "not allowed"}).status_code == 403
    )


def test_auditors_read_but_do_not_change(the_day, login, actors):
    bank_file = import_sample(actors["manager"])
    client = login("auditor")
    assert client.get(LIST).status_code == 200
    html = client.get(REPORT).content.decode()
    assert 'data-testid="open-count">3<' in html and "Post it now" not in html
    long_item = bank_file.items.get(kind=Kind.LONG)
    assert client.post(f"/payments/bank/items/{long_item.pk}/post/").status_code == 403
    assert upload(client, business_date="2026-11-21").status_code == 403
    assert not ReconciliationItem.objects.filter(cleared=True).exists()


def test_a_manager_of_another_county_cannot_clear_these_accounts(the_day, login, actors):
    bank_file = import_sample(actors["manager"])
    mismatch = bank_file.items.get(kind=Kind.MISMATCH)
    response = login("manager_bs").post(
        f"/payments/bank/items/{mismatch.pk}/clear/", {"note": "other county"}
    )
    assert response.status_code == 403
    mismatch.refresh_from_db()
    assert not mismatch.cleared


def test_unknown_day_is_404(banks, login):
    client = login("manager")
    assert client.get("/payments/bank/files/QXRCB/2026-11-20/").status_code == 404
    assert client.get("/payments/bank/files/QXRCB/not-a-date/").status_code == 404
