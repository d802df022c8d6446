"""An operator's own webhook secret: `whsec_` and the base64 of 24 to 64 bytes, else an error naming --secret."""

from __future__ import annotations

import base64

import pytest

from dispatcher.resources import Invalid
from dispatcher.resources.webhooks import check_secret


@pytest.mark.parametrize("size", [24, 32, 64])
def test_good_secrets_are_kept_as_given(size: int) -> None:
    """24, 32 and 64 bytes of key are accepted and returned unchanged."""
    secret = "whsec_" + base64.b64encode(bytes(range(size))).decode()
    assert check_secret(secret) == secret


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "whsec_" + base64.b64encode(b"x" * 23).decode(), "whsec_" + base64.b64encode(b"x" * 65).decode(),
     base64.b64encode(b"x" * 32).decode(), "whsec_not base64!", "whsec_" + "A" * 43 + "=="],
)  # fmt: skip
def test_bad_secrets_are_refused(secret: str) -> None:
    """Too short, too long, no prefix, not base64 (or badly padded): Invalid on the field secret."""
    with pytest.raises(Invalid) as caught:
        check_secret(secret)
    assert caught.value.field == "secret"
