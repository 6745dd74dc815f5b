"""The French catalogue is complete, consistent and compiled (the .mo Django reads is the .po)."""

from __future__ import annotations

import re

import polib
from django.conf import settings

LC = settings.BASE_DIR / "locale" / "fr" / "LC_MESSAGES"
PLACEHOLDER = re.compile(r"%\(\w+\)s")


def test_every_string_has_a_french_translation() -> None:
    po = polib.pofile(str(LC / "django.po"))
    assert [e.msgid for e in po.untranslated_entries()] == []
    # Fuzzy entries are guesses by makemessages: Django ignores them, so they read as English
    assert [e.msgid for e in po.fuzzy_entries()] == []


def test_translations_keep_the_placeholders_of_their_english() -> None:
    # A translation that drops or renames a parameter fails at render (or shows English)
    po = polib.pofile(str(LC / "django.po"))
    for e in po.translated_entries():
        if e.msgid_plural:
            assert set(PLACEHOLDER.findall(e.msgstr_plural[1])) == set(PLACEHOLDER.findall(e.msgid_plural)), e.msgid
        else:
            assert set(PLACEHOLDER.findall(e.msgstr)) == set(PLACEHOLDER.findall(e.msgid)), e.msgid


def test_the_compiled_catalogue_is_the_po_file() -> None:
    # Django reads django.mo: it must be compiled from the current .po (msgfmt -o django.mo django.po)
    def table(entries: list[polib.POEntry] | polib.MOFile) -> dict[tuple[str | None, str], object]:
        return {(e.msgctxt, e.msgid): e.msgstr or dict(e.msgstr_plural) for e in entries if e.msgid}

    po = polib.pofile(str(LC / "django.po"))
    mo = polib.mofile(str(LC / "django.mo"))
    assert table(po.translated_entries()) == table(mo)
