"""Simplified Chinese is the default staff language and its catalogue is complete.

* every msgid in locale/zh_Hans/LC_MESSAGES/django.po is translated and none is fuzzy;
* the committed django.mo holds exactly what the .po says (a stale .mo fails);
* pages render in Chinese by default and in English once the user switches.
"""

import ast
import gettext
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

LC_MESSAGES = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES"
PO_PATH = LC_MESSAGES / "django.po"
MO_PATH = LC_MESSAGES / "django.mo"

# Terms other pages and tests rely on; they must not drift.
GLOSSARY = {
    "Find a customer": "查找客户",
    "Search": "查询",
    "Staff sign-in": "员工登录",
    "Sign in": "登录",
    "Sign out": "退出",
    "Accounts": "账户",
    "Service points": "计量点",
    "Customer number": "客户编号",
    "Contacts": "联系人",
    "Change history": "变更记录",
    "New customer": "新建客户",
    "Customers": "客户",
    "Kilowatt": "千瓦",
    "Audit trail": "审计轨迹",
}


# --- a minimal .po reader (standard library only) -------------------------------------------


def _unquote(token: str) -> str:
    # PO strings use C escapes (\n, \t, \", \\), which a Python string literal accepts as is.
    return ast.literal_eval(token)


def parse_po(path: Path) -> list[dict]:
    """Entries of a .po file, obsolete (#~) ones excluded.

    Each entry: ``flags`` (set), ``msgctxt`` (str or None), ``msgid``, ``msgid_plural``
    (str or None) and ``msgstr`` (dict: index -> text; a singular entry uses index 0).
    """
    entries: list[dict] = []
    entry: dict | None = None
    target: tuple | None = None  # (key, index) the next continuation line appends to

    def new_entry():
        return {"flags": set(), "msgctxt": None, "msgid": None, "msgid_plural": None, "msgstr": {}}

    def finish():
        if entry is not None and entry["msgid"] is not None:
            entries.append(entry)

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            finish()
            entry, target = None, None
            continue
        if line.startswith("#~"):
            continue
        if line.startswith("#"):
            if entry is not None and entry["msgid"] is not None:
                finish()
                entry = None
            entry = entry or new_entry()
            if line.startswith("#,"):
                entry["flags"].update(f.strip() for f in line[2:].split(",") if f.strip())
            continue
        if line.startswith('"'):
            assert target is not None, f"continuation line without a keyword: {raw!r}"
            key, index = target
            if key == "msgstr":
                entry["msgstr"][index] += _unquote(line)
            else:
                entry[key] += _unquote(line)
            continue
        keyword, _, value = line.partition(" ")
        if keyword in ("msgctxt", "msgid") and entry is not None and entry["msgid"] is not None:
            # A new entry starts without a blank line between them.
            if keyword == "msgctxt" or entry["msgstr"]:
                finish()
                entry = None
        entry = entry or new_entry()
        if keyword.startswith("msgstr"):
            index = int(keyword[7:-1]) if keyword.startswith("msgstr[") else 0
            entry["msgstr"][index] = _unquote(value)
            target = ("msgstr", index)
        elif keyword in ("msgctxt", "msgid", "msgid_plural"):
            entry[keyword] = _unquote(value)
            target = (keyword, None)
        else:
            raise AssertionError(f"unexpected line in {path.name}: {raw!r}")
    finish()
    return entries


def catalog_from_po(entries: list[dict]) -> dict:
    """What GNUTranslations._catalog holds for a .mo compiled from these entries
    (msgfmt leaves out fuzzy and untranslated entries, but keeps the header)."""
    catalog = {}
    for e in entries:
        is_header = e["msgid"] == "" and e["msgctxt"] is None
        if not is_header and ("fuzzy" in e["flags"] or not all(e["msgstr"].values())):
            continue
        key = e["msgid"] if e["msgctxt"] is None else f"{e['msgctxt']}\x04{e['msgid']}"
        if e["msgid_plural"] is None:
            catalog[key] = e["msgstr"][0]
        else:
            for index, text in e["msgstr"].items():
                catalog[(key, index)] = text
    return _normalise(catalog)


def _normalise(catalog: dict) -> dict:
    """Recent msgfmt drops POT-Creation-Date from the header (reproducible builds), and
    makemessages bumps it on every run, so it does not count as a difference."""
    catalog = dict(catalog)
    if "" in catalog:
        lines = catalog[""].splitlines(keepends=True)
        catalog[""] = "".join(line for line in lines if not line.startswith("POT-Creation-Date:"))
    return catalog


def load_mo(path: Path) -> dict:
    with path.open("rb") as fh:
        return _normalise(gettext.GNUTranslations(fh)._catalog)


@pytest.fixture(scope="module")
def po_entries():
    assert PO_PATH.exists(), f"{PO_PATH} is missing: run makemessages -l zh_Hans"
    return parse_po(PO_PATH)


# --- (a) the catalogue is complete ------------------------------------------------------------


def test_po_header_is_chinese_with_one_plural_form(po_entries):
    header = next(e for e in po_entries if e["msgid"] == "" and e["msgctxt"] is None)
    assert "fuzzy" not in header["flags"]
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"][0]
    assert "charset=UTF-8" in header["msgstr"][0]


def test_every_msgid_is_translated_and_none_is_fuzzy(po_entries):
    messages = [e for e in po_entries if e["msgid"] != ""]
    assert len(messages) > 100, "the catalogue looks truncated"
    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e["flags"]]
    untranslated = [e["msgid"] for e in messages if not e["msgstr"] or not all(e["msgstr"].values())]
    assert not fuzzy, f"fuzzy entries: {fuzzy}"
    assert not untranslated, f"untranslated msgids: {untranslated}"
    # Chinese has a single plural form.
    plurals = [e for e in messages if e["msgid_plural"] is not None]
    wrong_plurals = [e["msgid"] for e in plurals if set(e["msgstr"]) != {0}]
    assert not wrong_plurals, f"plural entries need exactly msgstr[0]: {wrong_plurals}"


def test_placeholders_are_kept(po_entries):
    placeholder = re.compile(r"%\(\w+\)[sd]|\{\{\s*\w+\s*\}\}")
    broken = []
    for e in po_entries:
        if not e["msgid"]:
            continue
        expected = sorted(placeholder.findall(e["msgid"]))
        for text in e["msgstr"].values():
            if sorted(placeholder.findall(text)) != expected:
                broken.append((e["msgid"], text))
    assert not broken, broken


def test_glossary_terms(po_entries):
    translations = {e["msgid"]: e["msgstr"].get(0) for e in po_entries if e["msgctxt"] is None}
    for msgid, expected in GLOSSARY.items():
        assert translations.get(msgid) == expected, msgid


# --- (b) the committed .mo is not stale -------------------------------------------------------


def test_committed_mo_matches_po(po_entries):
    assert MO_PATH.exists(), f"{MO_PATH} is missing: run compilemessages -l zh_Hans"
    expected = catalog_from_po(po_entries)
    actual = load_mo(MO_PATH)
    assert actual == expected, (
        "locale/zh_Hans/LC_MESSAGES/django.mo is out of date with django.po: "
        "run `manage.py compilemessages -l zh_Hans` and commit the .mo"
    )


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU gettext (msgfmt) is not installed")
def test_msgfmt_compiles_the_po_to_the_committed_mo(tmp_path):
    """The same check with the real compiler, which also validates python-format strings."""
    compiled = tmp_path / "django.mo"
    result = subprocess.run(
        ["msgfmt", "--check", "-o", str(compiled), str(PO_PATH)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert load_mo(compiled) == load_mo(MO_PATH), (
        "django.mo is stale: run `manage.py compilemessages -l zh_Hans` and commit it"
    )


# --- (c) pages are Chinese by default, English on request -------------------------------------


@pytest.mark.django_db
def test_login_page_is_chinese_by_default(client):
    response = client.get("/login/", HTTP_HOST="127.0.0.1")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'lang="zh-hans"' in body
    assert "员工登录" in body
    assert "千瓦" in body
    assert "Staff sign-in" not in body


@pytest.mark.django_db
def test_login_page_in_english_with_language_cookie(client):
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    response = client.get("/login/", HTTP_HOST="127.0.0.1")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'lang="en"' in body
    assert "Staff sign-in" in body
    assert "员工登录" not in body


@pytest.mark.django_db
def test_set_language_switches_to_english_and_back(client):
    response = client.post("/i18n/setlang/", {"language": "en", "next": "/login/"}, HTTP_HOST="127.0.0.1")
    assert response.status_code == 302
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "en"
    body = client.get("/login/", HTTP_HOST="127.0.0.1").content.decode()
    assert "Staff sign-in" in body
    assert 'lang="en"' in body

    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/login/"}, HTTP_HOST="127.0.0.1")
    body = client.get("/login/", HTTP_HOST="127.0.0.1").content.decode()
    assert "员工登录" in body
    assert 'lang="zh-hans"' in body


@pytest.mark.django_db
def test_accept_language_english_is_honoured(client):
    body = client.get("/login/", HTTP_HOST="127.0.0.1", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Staff sign-in" in body
