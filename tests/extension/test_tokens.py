"""ContextLab API tokens: hashed storage, verification, expiry, revocation and the cache."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, text

from contextlab.extension.principals import Caller
from contextlab.extension.tokens import (
    TokenError,
    TokenService,
    parse_expires,
    token_from_headers,
)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return FakeClock(datetime(2026, 11, 13, 10, 0, tzinfo=UTC))


@pytest.fixture
def service(store, clock):
    return TokenService(store, clock=clock)


def test_create_then_verify_round_trip(service):
    token, record = service.create(
        "ci-bot", ["sql:query", "notebooks:*"], attributes={"roles": ["Operator"], "org": "acme"}
    )
    assert re.fullmatch(r"cl_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token)
    assert token.startswith(f"cl_{record.id}_")
    assert record.name == "ci-bot"
    assert record.scopes == ("sql:query", "notebooks:*")
    assert record.attributes == {"roles": ["Operator"], "org": "acme"}
    assert record.status == "active"
    assert record.expires_at is None and record.revoked_at is None

    caller = service.verify(token)
    assert isinstance(caller, Caller)
    assert caller.name == "token:ci-bot"
    assert caller.kind == "token"
    assert caller.token_id == record.id
    assert caller.scopes == ("sql:query", "notebooks:*")
    assert caller.roles == ("Operator",)
    assert caller.tenant == "acme"
    assert caller.has_scope("notebooks:read") and not caller.has_scope("sql:write")
    assert not caller.is_admin


def test_default_role_is_viewer(service):
    token, record = service.create("reader", ["*"])
    assert record.attributes["roles"] == ["Viewer"]
    assert service.verify(token).roles == ("Viewer",)


def test_stored_row_holds_only_the_hash(service, store):
    token, record = service.create("ci-bot", ["*"])
    secret = token.split("_", 2)[2]
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM api_tokens")).mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["id"] == record.id
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    dumped = " ".join(str(value) for value in row.values())
    assert secret not in dumped and token not in dumped
    assert "secret" not in repr(record) and secret not in repr(record)


def test_verify_survives_a_new_service_on_the_same_database(service, store):
    token, _ = service.create("ci-bot", ["*"])
    assert TokenService(store).verify(token).name == "token:ci-bot"


def test_wrong_secret_is_unknown(service):
    token, record = service.create("ci-bot", ["*"])
    service.verify(token)  # warm the cache: a cached row must not help a wrong secret
    forged = f"cl_{record.id}_{'A' * 43}"
    with pytest.raises(TokenError) as info:
        service.verify(forged)
    assert info.value.reason == "unknown"
    assert info.value.token_id == record.id
    assert "contextlab token create" in str(info.value)


def test_unknown_id_is_unknown(service):
    with pytest.raises(TokenError) as info:
        service.verify(f"cl_{'0' * 12}_{'A' * 43}")
    assert info.value.reason == "unknown"


def test_creating_a_token_forgets_a_cached_unknown_for_its_id(service, monkeypatch):
    import contextlab.extension.tokens as tokens

    monkeypatch.setattr(tokens.secrets, "token_hex", lambda n: "0123456789ab")
    with pytest.raises(TokenError):
        service.verify(f"cl_0123456789ab_{'A' * 43}")  # caches "unknown" for this id
    token, record = service.create("ci-bot", ["*"])
    assert record.id == "0123456789ab"
    assert service.verify(token).token_id == record.id


def test_warm_verify_does_not_touch_the_database(service, store):
    token, _ = service.create("ci-bot", ["*"])
    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    service.verify(token)
    assert len(statements) == 1  # the first verify reads the row
    for _ in range(100):
        service.verify(token)
    assert len(statements) == 1


def test_expired_token_names_the_time_and_the_fix(service, clock):
    token, record = service.create("short", ["*"], expires_in=timedelta(hours=1))
    assert record.expires_at == datetime(2026, 11, 13, 11, 0, tzinfo=UTC)
    service.verify(token)
    clock.now += timedelta(minutes=59)
    service.verify(token)
    clock.now += timedelta(minutes=1)
    with pytest.raises(TokenError) as info:
        service.verify(token)  # the cached row is warm: expiry is still checked against the clock
    assert info.value.reason == "expired"
    assert str(info.value) == (
        f"Token cl_{record.id}… expired at 2026-11-13T11:00:00Z; create a new one with `contextlab token create`."
    )
    assert service.get(record.id).status_at(clock.now) == "expired"


def test_revoke_takes_effect_at_once_with_a_warm_cache(store, clock):
    service = TokenService(store, clock=clock, cache_seconds=3600)
    token, record = service.create("ci-bot", ["*"])
    service.verify(token)
    service.verify(token)
    revoked = service.revoke(record.id)
    assert revoked.status == "revoked"
    assert revoked.revoked_at == clock.now
    with pytest.raises(TokenError) as info:
        service.verify(token)
    assert info.value.reason == "revoked"
    assert "revoked at 2026-11-13T10:00:00Z" in str(info.value)
    assert "contextlab token create" in str(info.value)
    # Revoking again keeps the first time.
    clock.now += timedelta(hours=1)
    assert service.revoke(record.id).revoked_at == revoked.revoked_at


def test_revoke_by_another_service_is_seen_after_the_cache_expires(store):
    api, cli = TokenService(store, cache_seconds=0.2), TokenService(store)
    token, record = api.create("ci-bot", ["*"])
    api.verify(token)
    cli.revoke(record.id)
    api.verify(token)  # still cached in this process
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while datetime.now(UTC) < deadline:
        try:
            api.verify(token)
        except TokenError as error:
            assert error.reason == "revoked"
            break
    else:
        pytest.fail("the revocation was never seen")


def test_revoke_get_unknown_id(service):
    with pytest.raises(KeyError):
        service.revoke("000000000000")
    with pytest.raises(KeyError):
        service.get("000000000000")


def test_list_and_get(service, clock):
    _, first = service.create("a", ["*"])
    clock.now += timedelta(seconds=1)
    _, second = service.create("b", ["sql:query"], expires_in=timedelta(minutes=5))
    service.revoke(first.id)
    assert [record.id for record in service.list()] == [second.id]
    everything = service.list(include_revoked=True)
    assert [record.id for record in everything] == [first.id, second.id]
    assert [record.status_at(clock.now) for record in everything] == ["revoked", "active"]
    assert service.get(second.id) == second
    assert service.get(second.id).to_dict(clock.now) == {
        "id": second.id,
        "name": "b",
        "scopes": ["sql:query"],
        "attributes": {"roles": ["Viewer"]},
        "created_at": "2026-11-13T10:00:01Z",
        "expires_at": "2026-11-13T10:05:01Z",
        "revoked_at": None,
        "status": "active",
    }


def test_callers_cannot_change_the_cached_row(service):
    token, _ = service.create("ci-bot", ["*"], attributes={"roles": ["Operator"], "project": "p"})
    first = service.verify(token)
    first.attributes["project"] = "changed"
    assert service.verify(token).attributes["project"] == "p"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "cl_",
        "cl_abc",
        "cl_0123456789ab",
        "cl_0123456789ab_short",
        "cl_0123456789AB_" + "A" * 43,  # the id is lowercase hex
        "cl_0123456789ab_" + "A" * 44,
        "cl_0123456789ab_" + "A" * 42 + "!",
        "xx_0123456789ab_" + "A" * 43,
        " cl_0123456789ab_" + "A" * 43,
    ],
)
def test_malformed_tokens(service, token):
    with pytest.raises(TokenError) as info:
        service.verify(token)
    if token:
        assert info.value.reason == "malformed"
        assert "contextlab token create" in str(info.value)
    else:
        assert info.value.reason == "missing"


def test_missing_token(service):
    with pytest.raises(TokenError) as info:
        service.verify(None)
    assert info.value.reason == "missing"
    assert "Bearer" in str(info.value)


def test_secret_with_underscores_and_dashes_verifies(service, monkeypatch):
    import contextlab.extension.tokens as tokens

    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda n: "_-" * 21 + "_")
    token, record = service.create("odd", ["*"])
    assert service.verify(token).token_id == record.id


@pytest.mark.parametrize(
    "scopes",
    [[], [""], ["   "], ["sql query"], ["sql:query:extra"], ["sql:"], [":query"], ["drop table;"], "sql:query", [None]],
)
def test_invalid_scopes_are_rejected(service, scopes):
    with pytest.raises(ValueError):
        service.create("bad", scopes)


def test_valid_scopes(service):
    _, record = service.create(
        "ok", ["sql:query", "notebooks:*", "upstream:github__*", "*", "admin", "sql:query", "my-server:tool.v2"]
    )
    assert record.scopes == ("sql:query", "notebooks:*", "upstream:github__*", "*", "admin", "my-server:tool.v2")


@pytest.mark.parametrize(
    "attributes",
    [
        {"roles": ["Root"]},
        {"roles": ["Viewer", "viewer"]},
        {"roles": []},
        {"roles": 3},
        {"org": ""},
        {"tenant": 5},
        {"extra": object()},
    ],
)
def test_invalid_attributes_are_rejected(service, attributes):
    with pytest.raises(ValueError):
        service.create("bad", ["*"], attributes=attributes)


def test_role_error_lists_the_roles(service):
    with pytest.raises(ValueError, match="Owner, Admin, Operator, Viewer"):
        service.create("bad", ["*"], attributes={"roles": ["Root"]})


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, "tab\there"])
def test_invalid_names_are_rejected(service, name):
    with pytest.raises(ValueError):
        service.create(name, ["*"])


def test_non_positive_expiry_is_rejected(service):
    with pytest.raises(ValueError):
        service.create("bad", ["*"], expires_in=timedelta(0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 7D ", timedelta(days=7)),
        ("never", None),
        ("Never", None),
    ],
)
def test_parse_expires(text, expected):
    assert parse_expires(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "0d", "-1d", "1.5h", "7 days", "forever", "3y"])
def test_parse_expires_rejects_garbage(text):
    with pytest.raises(ValueError, match="30m, 12h, 7d or 2w"):
        parse_expires(text)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer cl_abc", "cl_abc"),
        ("bearer  cl_abc ", "cl_abc"),
        ("token cl_abc", "cl_abc"),
        ("Token cl_abc", "cl_abc"),
        ("token 3f2a9c", None),  # a Jupyter token: Jupyter's auth handles it
        ("Bearer eyJhbGciOi", None),
        ("Basic cl_abc", None),
        ("cl_abc", None),
        ("", None),
        (None, None),
    ],
)
def test_token_from_headers(header, expected):
    assert token_from_headers(header) == expected
