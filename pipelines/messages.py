"""Status messages people read, stored as a translation key plus parameters.

A job's message is written once, by a worker that has no idea who will read it, and
read later in English or French (the admin pages, the live feeds). So a job stores the
English text (``status_message``: the API field, logs, ``sluice_*`` commands) *and* the
``gettext_noop``-marked English msgid with its parameters (``status_key`` /
``status_params``), from which :func:`render` produces the text in any language of the
catalogue.

Call sites build a message with :func:`msg` and hand it where a string went before
(``status_message=msg(gettext_noop("Waiting for a worker"))``); the transition code
stores the three columns with :func:`columns`. A parameter may itself be a message
(rendered in the same language). Numbers (``int``/``float``) are shown as localized
numbers with grouping ("48,210" / "48 210"): pass ids and years as ``str``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils import formats, translation
from django.utils.translation import gettext_noop

logger = logging.getLogger(__name__)

ENGLISH = "en"


@dataclass(frozen=True)
class Message:
    key: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        """The English text (what ``status_message`` stores)."""
        return render(self.key, self.as_json()["params"], ENGLISH)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "params": {k: _to_json(v) for k, v in self.params.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Message:
        return cls(str(data.get("key") or ""), dict(data.get("params") or {}))


def msg(key: str, /, **params: Any) -> Message:
    """A message: ``key`` is the English msgid (wrap the literal in ``gettext_noop``)."""
    return Message(key, params)


WAITING_UPSTREAM = msg(gettext_noop("Waiting for upstream jobs"))
WAITING_WORKER = msg(gettext_noop("Waiting for a worker"))

# A job's result as a word people read ("Success"): the message of an outcome without one.
RESULT_WORDS = {
    "success": gettext_noop("Success"), "warning": gettext_noop("Warning"), "error": gettext_noop("Error"),
    "cancelled": gettext_noop("Cancelled"), "skipped": gettext_noop("Skipped"),
}


def result_message(result: str) -> Message | str:
    word = RESULT_WORDS.get(str(result))
    return msg(word) if word else str(result).capitalize()


def _to_json(value: Any) -> Any:
    if isinstance(value, Message):
        return value.as_json()
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


def columns(message: Message | str | None) -> dict[str, Any]:
    """The job columns one message is stored in (a plain string has no key: shown as is)."""
    if isinstance(message, Message):
        data = message.as_json()
        return {"status_message": _english(data["key"], data["params"]),
                "status_key": data["key"], "status_params": data["params"]}
    return {"status_message": message or "", "status_key": "", "status_params": {}}


def _english(key: str, params: Mapping[str, Any]) -> str:
    """``render`` in English, remembered for flat parameters: every claim renders "Running
    on <its worker>", and switching the active language per call showed in the
    worker's profile (issue 13)."""
    try:
        # The type is part of the key: True == 1 to a dict, not to the rendered text.
        return _english_flat(key, tuple((k, type(v), v) for k, v in params.items()))
    except TypeError:  # a parameter that is itself a message (a dict): not hashable
        return render(key, params, ENGLISH)


@functools.lru_cache(maxsize=4096)
def _english_flat(key: str, params: tuple[tuple[str, type, Any], ...]) -> str:
    return render(key, {k: v for k, _, v in params}, ENGLISH)


def _value(value: Any) -> Any:
    if isinstance(value, Mapping) and "key" in value:
        return render(str(value["key"]), value.get("params") or {})
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return formats.number_format(value, force_grouping=True)
    if isinstance(value, float):
        # Rounded first: number_format cuts digits, the English text always rounded.
        return formats.number_format(round(value, 1), decimal_pos=1, force_grouping=True)
    return value


def render(key: str, params: Mapping[str, Any] | None = None, language: str | None = None) -> str:
    """The message in ``language`` (the active one when None); English if the catalogue lacks it."""
    if language is not None:
        with translation.override(language):
            return render(key, params)
    text = translation.gettext(key) if key else ""
    if not params:
        return text
    values = {k: _value(v) for k, v in params.items()}
    try:
        return text % values
    except (KeyError, ValueError, TypeError):
        # A translation that names a parameter the message lacks: the English text.
        logger.warning("bad translation of status message %r", key)
        try:
            return key % values
        except (KeyError, ValueError, TypeError):
            return key


def text_of(key: str, params: Mapping[str, Any] | None, fallback: str, language: str | None = None) -> str:
    """A stored message (key, params) in ``language``; ``fallback`` (the stored English) if no key."""
    return render(key, params, language) if key else fallback


def localize(data: Any, language: str, also: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """``data`` (an event, a snapshot) with every job's ``status_message`` in ``language``.

    Walks dicts and lists, copying them (the input, shared between sockets, is left
    alone); a dict carrying ``status_key`` gets its message re-rendered, and ``also``
    may change each copied dict further (in ``language``). Returns ``data`` itself when
    the language is English and there is nothing else to do.
    """
    if also is None and translation.get_supported_language_variant(language).split("-")[0] == ENGLISH:
        return data
    with translation.override(language):
        return _localize(data, also)


def _localize(data: Any, also: Callable[[dict[str, Any]], None] | None) -> Any:
    if isinstance(data, list):
        return [_localize(v, also) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: _localize(v, also) if isinstance(v, (dict, list)) else v for k, v in data.items()}
    if out.get("status_key"):
        out["status_message"] = render(out["status_key"], out.get("status_params"))
    if also is not None:
        also(out)
    return out
