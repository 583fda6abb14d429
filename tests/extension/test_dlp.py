"""DLP redaction: each detector on real formats and on look-alikes that must survive untouched."""

from __future__ import annotations

import json
import random
import re
import string

import pytest

from contextlab.extension.dlp import BUILTIN_DETECTORS, Redactor

# Credentials are assembled at run time so secret scanners do not flag this file.
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB_TOKEN = "gh" + "p_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github" + "_pat_" + "11ABCDEFG0123456789abc_" + "x" * 59
OPENAI_KEY = "sk-" + "proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
ANTHROPIC_KEY = "sk-" + "ant-api03-" + "a1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6-Q7r8S9t0_uvwx"
SLACK_TOKEN = "xo" + "xb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE_KEY = "AI" + "za" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
STRIPE_KEY = "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_RESTRICTED = "rk" + "_live_" + "51H8sKx2eZvKYlo2C0aBcDeFgHiJ"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
CONTEXTLAB_TOKEN = "cl" + "_live_" + "Zx8vQ2mN4kLp7sR1tY6uW3eA9bC5dF0g"
PEM = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END " + "RSA PRIVATE KEY-----"
)

# Ordinary data that must come through untouched.
ORDER_ROWS = [
    {
        "id": "1000007919",
        "order_id": "550e8400-e29b-41d4-a716-446655440000",
        "ref": "order 4111111111111112",  # 16 digits, Luhn fails
        "created_at": "2024-01-15T10:30:00Z",
        "updated_at": "2024-01-15T18:02:11.123456+08:00",
        "prices": "19.99, 24.50, 1299.00, 0.4111111111111111",
        "note": "Delivered 2024-01-15 10:30 to 221B Baker Street; batch 1234-5678, page 12 of 30.",
    },
    {
        "id": "1700000000123",  # epoch milliseconds
        "order_id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "ref": "110105194912310021",  # Chinese ID layout, wrong check digit
        "created_at": "2023-12-31T23:59:59.999Z",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "note": "Version 1.2.3, build 20240115.1, ticket ABC-1234567, task-runner-for-long-jobs.",
    },
]


@pytest.fixture(scope="module")
def redactor():
    return Redactor()


def redacted(redactor, text):
    out, counts = redactor.redact_text(text)
    return out, dict(counts)


# -- email ------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["john.doe+tag@example.co.uk", "a@b.io", "ops_team@mail-01.example.com"])
def test_email_positives(redactor, address):
    assert redacted(redactor, f"Contact <{address}>.") == ("Contact <[REDACTED:email]>.", {"email": 1})


@pytest.mark.parametrize("text", ["user@localhost", "icon@2x.png", "npm i @scope/pkg@1.2.3", "a @ b.com"])
def test_email_negatives(redactor, text):
    assert redacted(redactor, text) == (text, {})


# -- phone ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "number",
    [
        "+1 (415) 555-2671",
        "+44 20 7946 0958",
        "+14155552671",
        "+86 138 1234 5678",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-555-123-4567",
        "13812345678",
        "138 1234 5678",
    ],
)
def test_phone_positives(redactor, number):
    assert redacted(redactor, f"call {number} today") == ("call [REDACTED:phone] today", {"phone": 1})


@pytest.mark.parametrize(
    "text",
    [
        "order id 1234567890",  # bare 10 digits
        "id 12345678901",  # 11 digits, not a Chinese mobile prefix
        "at 2024-01-15T10:30:00+08:00 (UTC+08:00)",
        "x+12345678",  # arithmetic, not a phone
        "version 555.123.45678",
        "call 555-123-4567-890",
    ],
)
def test_phone_negatives(redactor, text):
    assert redacted(redactor, text) == (text, {})


# -- national ids -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["123-45-6789", "11010519491231002X", "11010519491231002x", "440308199901010012", "AB123456C", "AB 12 34 56 C"],
)
def test_national_id_positives(redactor, value):
    assert redacted(redactor, f"id: {value}") == ("id: [REDACTED:national_id]", {"national_id": 1})


@pytest.mark.parametrize(
    "value",
    [
        "000-12-3456",  # invalid SSN areas, group and serial
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "110105194912310021",  # Chinese ID with a wrong check digit
        "110105194913310028",  # impossible birth month
        "BG123456A",  # NINO prefixes that are never issued, or letters that are never used
        "DA123456A",
        "AB123456E",
        "ab123456c",
    ],
)
def test_national_id_negatives(redactor, value):
    assert redacted(redactor, f"id: {value}") == (f"id: {value}", {})


# -- payment cards ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555555555554444",
        "2223003122003222",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "3530111333300000",
        "6200000000000005",
    ],
)
def test_credit_card_positives(redactor, card):
    assert redacted(redactor, f"card {card}, thanks") == ("card [REDACTED:credit_card], thanks", {"credit_card": 1})


def test_credit_card_followed_by_cvv_keeps_the_cvv(redactor):
    assert redacted(redactor, "4111 1111 1111 1111 123") == ("[REDACTED:credit_card] 123", {"credit_card": 1})


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112",  # Luhn fails
        "ref 1234567812345670",  # Luhn passes, no known issuer
        "ratio 0.4111111111111111",
        "total 4111111111111111.50",
        "4111 1111 1111 1112",
    ],
)
def test_credit_card_negatives(redactor, text):
    assert redacted(redactor, text) == (text, {})


# -- secrets ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "secret",
    [
        AWS_KEY,
        GITHUB_TOKEN,
        GITHUB_PAT,
        OPENAI_KEY,
        ANTHROPIC_KEY,
        SLACK_TOKEN,
        GOOGLE_KEY,
        STRIPE_KEY,
        STRIPE_RESTRICTED,
        JWT,
        CONTEXTLAB_TOKEN,
        PEM,
    ],
)
def test_secret_positives(redactor, secret):
    assert redacted(redactor, f"use {secret} now") == ("use [REDACTED:secret] now", {"secret": 1})


def test_truncated_pem_block_is_redacted_to_the_end_of_its_body(redactor):
    text = PEM.split("-----END")[0] + "(truncated)"
    assert redacted(redactor, text) == ("[REDACTED:secret](truncated)", {"secret": 1})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2&user=bob", "password=[REDACTED:secret]&user=bob"),
        ('{"password": "correct horse"}', '{"password": "[REDACTED:secret]"}'),
        ('{\\"password\\": \\"pw1\\"}', '{\\"password\\": \\"[REDACTED:secret]\\"}'),
        ("DB_PASSWORD=s3cr3t\n", "DB_PASSWORD=[REDACTED:secret]\n"),
        ("client_secret: abc.def", "client_secret: [REDACTED:secret]"),
        ("X-Api-Key: 0123abcd", "X-Api-Key: [REDACTED:secret]"),
        ("apikey='k-1'", "apikey='[REDACTED:secret]'"),
        ('"access_token":"tok"', '"access_token":"[REDACTED:secret]"'),
        ("token = abc123", "token = [REDACTED:secret]"),
        ("GITLAB_TOKEN=glpat-xyz", "GITLAB_TOKEN=[REDACTED:secret]"),
        ("spring.datasource.password=pw", "spring.datasource.password=[REDACTED:secret]"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "Authorization: Bearer [REDACTED:secret]"),
    ],
)
def test_secret_assignments_redact_only_the_value(redactor, text, expected):
    assert redacted(redactor, text) == (expected, {"secret": 1})


@pytest.mark.parametrize(
    "text",
    [
        '{"next_page_token": "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA0"}',  # pagination, not a credential
        '{"token_count": 5, "max_tokens": 1000, "tokens": "many"}',
        '{"is_secret": false, "password": null, "api_key": ""}',
        "password: ********",
        "password=${DB_PASSWORD}",
        "The secret garden; forgot your password? Reset it.",
        "pip install sk-learn-compatible-estimators-package",
        "task-runner-and-desk-organiser-with-long-name",
        "commit 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
        "AKIAIOSFODNN7EXAMPL",  # one character short
        "The bearer of this letter",
    ],
)
def test_secret_negatives(redactor, text):
    assert redacted(redactor, text) == (text, {})


# -- structures -------------------------------------------------------------------------------
def test_clean_structure_comes_back_as_the_same_object(redactor):
    result = {
        "content": [{"type": "text", "text": json.dumps(ORDER_ROWS)}],
        "structuredContent": {"rows": ORDER_ROWS, "count": 2, "ok": True, "cursor": None},
        "isError": False,
    }
    out, counts = redactor.redact(result)
    assert out is result
    assert counts == {}
    text = json.dumps(ORDER_ROWS)
    assert redactor.redact_text(text)[0] is text


def test_nested_redaction_counts_and_copies_only_changed_paths(redactor):
    untouched = {"status": "shipped", "tags": ["a", "b"]}
    result = {
        "content": [{"type": "text", "text": "Reach jane@example.com or +1 415 555 2671"}],
        "structuredContent": {
            "customer": {"email": "jane@example.com", "cards": ("4111 1111 1111 1111", "n/a")},
            "order": untouched,
            "jane@example.com": 4111111111111111,  # keys and numbers are not strings to redact
        },
    }
    snapshot = json.loads(json.dumps(result))
    out, counts = redactor.redact(result)
    assert counts == {"email": 2, "phone": 1, "credit_card": 1}
    assert out["content"][0]["text"] == "Reach [REDACTED:email] or [REDACTED:phone]"
    customer = out["structuredContent"]["customer"]
    assert customer == {"email": "[REDACTED:email]", "cards": ("[REDACTED:credit_card]", "n/a")}
    assert isinstance(customer["cards"], tuple)
    assert out["structuredContent"]["order"] is untouched
    assert out["structuredContent"]["jane@example.com"] == 4111111111111111
    assert json.loads(json.dumps(result)) == snapshot  # the input is not modified


def test_a_structure_redacts_each_string_as_redact_text_would(redactor):
    strings = ["+1 415 555 2671", "a@b.io", "x", "", "password", "=hunter2", "4111", "1111 1111 1111", "ok"]
    out, counts = redactor.redact(strings)
    assert out == [redactor.redact_text(s)[0] for s in strings]
    assert counts == {"phone": 1, "email": 1}


def test_non_ascii_text_keeps_offsets(redactor):
    text = "联系人：张三，电话13812345678，邮箱 zhang@example.cn 😀 卡号 4111 1111 1111 1111。"
    out, counts = redactor.redact_text(text)
    assert out == "联系人：张三，电话[REDACTED:phone]，邮箱 [REDACTED:email] 😀 卡号 [REDACTED:credit_card]。"
    assert counts == {"phone": 1, "email": 1, "credit_card": 1}


# -- configuration ----------------------------------------------------------------------------
def test_only_the_selected_detectors_run():
    text = f"a@b.io 555-123-4567 {AWS_KEY}"
    assert Redactor(["email"]).redact_text(text) == (f"[REDACTED:email] 555-123-4567 {AWS_KEY}", {"email": 1})
    assert Redactor(["secret", "phone"]).redact_text(text)[0] == "a@b.io [REDACTED:phone] [REDACTED:secret]"
    assert Redactor([]).redact_text(text) == (text, {})


def test_custom_detectors():
    redactor = Redactor(
        ["email"],
        custom=[
            ("employee_id", re.compile(r"\bEMP-\d{6}\b"), None),
            ("account", re.compile(r"\bACCT-\d+(\d{4})\b"), r"ACCT-****\1"),
            ("whole_value", re.compile(r"^internal-only$"), "<hidden>"),
        ],
    )
    out, counts = redactor.redact({"a": "EMP-123456 and ACCT-99887766", "b": "internal-only", "c": "x@y.org"})
    assert out == {"a": "[REDACTED:employee_id] and ACCT-****7766", "b": "<hidden>", "c": "[REDACTED:email]"}
    assert counts == {"employee_id": 1, "account": 1, "whole_value": 1, "email": 1}


def test_unknown_detector_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError) as excinfo:
        Redactor(["email", "ssn"])
    message = str(excinfo.value)
    assert "'ssn'" in message
    assert all(name in message for name in BUILTIN_DETECTORS)


def test_custom_detector_needs_a_compiled_pattern():
    with pytest.raises(ValueError, match="compiled"):
        Redactor(custom=[("x", r"\d+", None)])


# -- the prefilter never hides a finding --------------------------------------------------------
FRAGMENTS = [
    AWS_KEY, GITHUB_TOKEN, GITHUB_PAT, OPENAI_KEY, ANTHROPIC_KEY, SLACK_TOKEN, GOOGLE_KEY, STRIPE_KEY, JWT,
    CONTEXTLAB_TOKEN, PEM, "jane.doe@example.com", "+44 20 7946 0958", "+86 138 1234 5678", "(555) 123-4567",
    "1-555-123-4567", "555.123.4567", "13812345678", "138-1234-5678", "123-45-6789", "11010519491231002X",
    "AB123456C", "AB 12 34 56 C", "AB123456 C", "4111 1111 1111 1111", "3782-822463-10005", "4111111111111111",
    "password=pw", '"api_key": "k"', "Bearer abcdefghijklmnopqrstuvwxyz0123", "2024-01-15T10:30:00+08:00",
    "550e8400-e29b-41d4-a716-446655440000", "4111111111111112", "1234567890", "19.99", "x", "-", "+", "(", ".",
]  # fmt: skip


def test_prefilter_finds_what_an_exhaustive_scan_finds():
    redactor = Redactor()
    rng = random.Random(20240115)
    noise = string.ascii_letters + string.digits + " .-+()_@:=\"'\n\t/é"
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.6:
                parts.append(rng.choice(FRAGMENTS))
            else:
                parts.append("".join(rng.choice(noise) for _ in range(rng.randint(0, 12))))
        text = "".join(rng.choice(["", " ", "-", ".", "(", "+", "_", "\n", "9", "A"]) + part for part in parts)
        fast = {(s.start, s.end, s.detector) for s in redactor._scan(text)}
        exhaustive = {(s.start, s.end, s.detector) for s in redactor._scan(text, exhaustive=True)}
        assert fast == exhaustive, text
