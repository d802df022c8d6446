"""Pure: the webhook formats, one module each, and the registry from `WebhookFormat` to its `Format`.

A format is everything a webhook's `format` means: its request body for an event, its target URL and its
headers (signatures included). Adding a format is one more module here and one more line in `FORMATS`
(and a member of `dispatcher.vocab.WebhookFormat`); nothing else branches on the format's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from dispatcher.formats.base import Format
from dispatcher.formats.fourme import FOURME
from dispatcher.formats.ricloud import RICLOUD
from dispatcher.formats.standard import STANDARD
from dispatcher.vocab import WebhookFormat

__all__ = ["FORMATS", "Format"]

FORMATS: Final[Mapping[WebhookFormat, Format]] = MappingProxyType(
    {
        WebhookFormat.STANDARD: STANDARD,
        WebhookFormat.FOURME: FOURME,
        WebhookFormat.RICLOUD: RICLOUD,
    }
)
"""Every format, by its name; a `WebhookFormat` member or its plain string value finds it."""
