from __future__ import annotations

import base64

from services.router.auth import BasicAuth


def header(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_a_bare_password_accepts_any_user_name() -> None:
    auth = BasicAuth("s3cret")
    assert auth.allows(header("anyone:s3cret")) and auth.allows(header(":s3cret"))
    assert not auth.allows(header("anyone:wrong")) and not auth.allows(header("s3cret"))


def test_user_and_password_must_both_match() -> None:
    auth = BasicAuth("alice:s3cret")
    assert auth.allows(header("alice:s3cret"))
    assert not auth.allows(header("bob:s3cret")) and not auth.allows(header("alice:other"))


def test_malformed_or_other_schemes_are_refused() -> None:
    auth = BasicAuth("s3cret")
    for value in (None, "", "Bearer s3cret", "Basic", "Basic !!!", "Basic " + "a" * 5):
        assert not auth.allows(value)


def test_a_missing_secret_refuses_everyone_and_the_value_never_shows() -> None:
    assert not BasicAuth(None).allows(header("x:"))
    assert "s3cret" not in repr(BasicAuth("s3cret")) + str(BasicAuth("s3cret"))
