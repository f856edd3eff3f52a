"""Identity documents and phone numbers, with the message a clerk sees for each mistake."""

from datetime import date

import pytest
from django.core.exceptions import ValidationError

from customers.validators import (
    display_phone,
    normalize_mobile,
    normalize_phone,
    resident_id_check_char,
    validate_credit_code,
    validate_resident_id,
)

pytestmark = pytest.mark.usefixtures("english")


def _error(fn, value) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(value)
    return info.value


# --- resident ID (GB 11643-1999) ------------------------------------------------------------
#
# Worked example, 11010519491231002X (the standard's own example):
#   digits   1  1  0  1  0  5  1  9  4  9  1  2  3  1  0  0  2
#   weights  7  9 10  5  8  4  2  1  6  3  7  9 10  5  8  4  2
#   products 7  9  0  5  0 20  2  9 24 27  7 18 30  5  0  0  4   sum 167
#   167 mod 11 = 2 -> "10X98765432"[2] = X
# 44052418800101001? : sum 195, 195 mod 11 = 8 -> "4" (born 1880: refused as out of range)
# 36102519800101123? : sum 216, 216 mod 11 = 7 -> "5"


@pytest.mark.parametrize(
    ("first17", "check"),
    [("11010519491231002", "X"), ("44052418800101001", "4"), ("36102519800101123", "5")],
)
def test_check_char_worked_examples(first17, check):
    assert resident_id_check_char(first17) == check


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("11010519491231002X", "11010519491231002X"),
        ("11010519491231002x", "11010519491231002X"),  # lower-case x is accepted
        (" 110105 19491231 002X ", "11010519491231002X"),  # spaces as printed on forms
        ("361025198001011235", "361025198001011235"),
    ],
)
def test_valid_resident_ids(raw, clean):
    assert validate_resident_id(raw) == clean


def test_wrong_check_digit_names_the_right_one():
    error = _error(validate_resident_id, "110105194912310021")
    assert error.code == "id_check_digit"
    assert error.messages == ["The last character of the ID number should be X; please check the number."]


def test_wrong_check_digit_single_typo_in_body():
    # 361025198001011235 with the birth day mistyped as 02: the 14th digit (weight 5) goes
    # up by 1, so the sum is 216 + 5 = 221, 221 mod 11 = 1 -> check character "0"
    error = _error(validate_resident_id, "361025198001021235")
    assert error.code == "id_check_digit"
    assert "should be 0;" in error.messages[0]


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("110105194902301234", "19490230"),  # 30 February
        ("110105194913011234", "19491301"),  # month 13
        ("110105194900001234", "19490000"),
    ],
)
def test_impossible_birth_date(number, shown):
    error = _error(validate_resident_id, number)
    assert error.code == "id_birth_date"
    assert error.messages == [f"The date of birth inside the ID number ({shown}) is not a real date."]


def test_birth_date_out_of_range():
    future = f"110105{date.today().year + 1}01011234"
    # 440524188001010014 is the standard's example and has a correct check digit, but a
    # customer born in 1880 is not plausible: births before 1900 are refused
    for number in (future, "110105189912311234", "440524188001010014"):
        error = _error(validate_resident_id, number)
        assert error.code == "id_birth_date"
        assert error.messages == ["The date of birth inside the ID number is out of range."]


@pytest.mark.parametrize(
    "number",
    ["", "1101051949123100", "1101051949123100211", "11010519491231002Y", "X10105194912310021", "abc"],
)
def test_bad_format(number):
    error = _error(validate_resident_id, number)
    assert error.code == "id_format"
    assert error.messages == ["A resident ID number has 17 digits followed by a digit or X."]


def test_none_is_a_format_error_not_a_crash():
    assert _error(validate_resident_id, None).code == "id_format"


# --- unified social credit code (GB 32100-2015) ----------------------------------------------
#
# Worked example, 91350100M000100Y43 (the standard's example): values of the first 17
# characters 9 1 3 5 0 1 0 0 M=21 0 0 0 1 0 0 Y=30 4, weights
# 1 3 9 27 19 26 16 17 20 29 25 13 8 24 10 30 28: sum 1640, 1640 mod 31 = 28, 31 - 28 = 3.


def test_valid_credit_code():
    assert validate_credit_code("91350100M000100Y43") == "91350100M000100Y43"
    assert validate_credit_code(" 91350100m000100y43 ") == "91350100M000100Y43"


def test_credit_code_wrong_check_character():
    error = _error(validate_credit_code, "91350100M000100Y44")
    assert error.code == "credit_code_check_digit"
    assert error.messages == ["The last character of the credit code should be 3; please check the code."]


@pytest.mark.parametrize(
    "code",
    [
        "",
        "91350100M000100Y4",  # 17 characters
        "91350100M000100Y433",  # 19
        "91350100I000100Y43",  # I is not used (looks like 1)
        "913501O0M000100Y43",  # letter O where the region digits are
        "91350100M000100Y4S",  # S is not used
    ],
)
def test_credit_code_bad_format(code):
    error = _error(validate_credit_code, code)
    assert error.code == "credit_code_format"
    assert error.messages == ["A unified social credit code has 18 characters (digits and capital letters)."]


# --- phone numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("13812345678", "+8613812345678"),
        ("138 1234 5678", "+8613812345678"),
        ("138-1234-5678", "+8613812345678"),
        ("+86 138 1234 5678", "+8613812345678"),
        ("+8613812345678", "+8613812345678"),
        ("  15912345678 ", "+8615912345678"),
        ("010-12345678", "+861012345678"),  # Beijing landline
        ("(0571) 8765 4321", "+8657187654321"),  # Hangzhou landline
        ("0791-86123456", "+8679186123456"),  # Nanchang landline
    ],
)
def test_normalize_phone(raw, e164):
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize("raw", ["", "   ", None])
def test_phone_required(raw):
    error = _error(normalize_phone, raw)
    assert error.code == "phone_required"
    assert error.messages == ["Enter a phone number."]


@pytest.mark.parametrize("raw", ["abc", "call me", "-"])
def test_phone_garbage(raw):
    error = _error(normalize_phone, raw)
    assert error.code == "phone_format"
    assert error.messages == [f"“{raw}” is not a phone number."]


@pytest.mark.parametrize(
    "raw",
    [
        "1381234567",  # 10 digits
        "138123456789",  # 12 digits
        "12345",
        "87654321",  # a landline without its area code
    ],
)
def test_phone_invalid(raw):
    error = _error(normalize_phone, raw)
    assert error.code == "phone_invalid"
    assert error.messages == [
        f"“{raw}” is not a valid phone number: a mobile number has 11 digits starting with 1; "
        "a landline needs its area code."
    ]


def test_normalize_mobile_accepts_mobiles_only():
    assert normalize_mobile("139 0000 1111") == "+8613900001111"
    error = _error(normalize_mobile, "010-12345678")
    assert error.code == "phone_not_mobile"
    assert error.messages == ["“010-12345678” is not a mobile number; notifications by SMS need one."]
    assert _error(normalize_mobile, "abc").code == "phone_format"


def test_display_phone():
    assert display_phone("+8613812345678") == "138 1234 5678"
    assert display_phone("+861012345678") == "010 1234 5678"
    assert display_phone("") == ""
    assert display_phone("not-e164") == "not-e164"  # stored garbage is shown as it is
