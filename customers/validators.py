"""Validation of identity documents and phone numbers, with messages a clerk can act on."""

import re
from datetime import date

import phonenumbers
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

# GB 11643-1999: weights of the 17 leading digits, and the check character by sum mod 11.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_RE = re.compile(r"^\d{17}[\dX]$")


def resident_id_check_char(first17: str) -> str:
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def normalize_resident_id(value: str) -> str:
    return (value or "").strip().replace(" ", "").upper()


def validate_resident_id(value: str) -> str:
    """Validate an 18-digit PRC resident identity number; return it normalised."""
    number = normalize_resident_id(value)
    if not _ID_RE.match(number):
        raise ValidationError(
            _("A resident ID number has 17 digits followed by a digit or X."), code="id_format"
        )
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise ValidationError(
            _("The date of birth inside the ID number (%(d)s) is not a real date.") % {"d": number[6:14]},
            code="id_birth_date",
        ) from None
    if born > date.today() or born.year < 1900:
        raise ValidationError(
            _("The date of birth inside the ID number is out of range."), code="id_birth_date"
        )
    expected = resident_id_check_char(number[:17])
    if number[17] != expected:
        raise ValidationError(
            _("The last character of the ID number should be %(c)s; please check the number.")
            % {"c": expected},
            code="id_check_digit",
        )
    return number


_CREDIT_CODE_RE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$")
_CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def validate_credit_code(value: str) -> str:
    """Validate an 18-character unified social credit code (GB 32100-2015)."""
    code = (value or "").strip().upper()
    if not _CREDIT_CODE_RE.match(code):
        raise ValidationError(
            _("A unified social credit code has 18 characters (digits and capital letters)."),
            code="credit_code_format",
        )
    total = sum(_CREDIT_CHARS.index(c) * w for c, w in zip(code[:17], _CREDIT_WEIGHTS, strict=True))
    expected = _CREDIT_CHARS[(31 - total % 31) % 31]
    if code[17] != expected:
        raise ValidationError(
            _("The last character of the credit code should be %(c)s; please check the code.")
            % {"c": expected},
            code="credit_code_check_digit",
        )
    return code


def normalize_phone(value: str) -> str:
    """Validate a mainland China phone number (mobile or landline with area code) and return
    it in E.164 form, e.g. +8613812345678."""
    raw = (value or "").strip()
    if not raw:
        raise ValidationError(_("Enter a phone number."), code="phone_required")
    try:
        parsed = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        raise ValidationError(_("“%(v)s” is not a phone number.") % {"v": raw}, code="phone_format") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValidationError(
            _(
                "“%(v)s” is not a valid phone number: a mobile number has 11 digits "
                "starting with 1; a landline needs its area code."
            )
            % {"v": raw},
            code="phone_invalid",
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_mobile(value: str) -> str:
    e164 = normalize_phone(value)
    parsed = phonenumbers.parse(e164)
    if phonenumbers.number_type(parsed) not in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        raise ValidationError(
            _("“%(v)s” is not a mobile number; notifications by SMS need one.") % {"v": value},
            code="phone_not_mobile",
        )
    return e164


def display_phone(e164: str) -> str:
    if not e164:
        return ""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
