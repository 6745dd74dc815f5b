"""Status messages: stored as English text plus a key and parameters, read in any language."""

from __future__ import annotations

from django.utils.translation import gettext_noop

from pipelines import messages
from pipelines.messages import msg


def test_a_message_is_stored_as_english_text_with_its_key_and_params() -> None:
    first = msg(gettext_noop(" — first: %(error)s"),
                error=msg(gettext_noop("row %(row)s, %(column)s: %(reason)s"), row="7", column="fte",
                          reason="not a number"))
    counts = msg(gettext_noop("%(loaded)s rows loaded, %(rejected)s rejected%(first)s"), loaded=48210, rejected=17,
                 first=first)

    stored = messages.columns(counts)

    # The English text is what the API and the CLI have always shown
    assert stored["status_message"] == "48,210 rows loaded, 17 rejected — first: row 7, fte: not a number"
    # ...and the key and parameters (nested messages too) are plain JSON
    assert stored["status_key"] == "%(loaded)s rows loaded, %(rejected)s rejected%(first)s"
    assert stored["status_params"]["first"]["params"]["error"]["key"] == "row %(row)s, %(column)s: %(reason)s"


def test_the_same_stored_message_reads_in_french_with_french_numbers() -> None:
    stored = messages.columns(msg(gettext_noop("%(det)s: %(rows)s rows, %(kg)s kg CO2e"), det="fte", rows=48210,
                                  kg=1234.56))

    french = messages.text_of(stored["status_key"], stored["status_params"], stored["status_message"], "fr")

    assert french.replace("\u202f", " ").replace("\xa0", " ") == "fte : 48 210 lignes, 1 234,6 kg CO2e"
    assert messages.text_of(stored["status_key"], stored["status_params"], stored["status_message"], "en") == (
        "fte: 48,210 rows, 1,234.6 kg CO2e")


def test_plain_text_and_old_rows_show_as_stored() -> None:
    # Rows written before keys existed (and handlers returning plain strings) keep their text
    assert messages.columns("Legacy text") == {"status_message": "Legacy text", "status_key": "", "status_params": {}}
    assert messages.text_of("", {}, "Legacy text", "fr") == "Legacy text"


def test_a_translation_naming_an_unknown_parameter_falls_back_to_english() -> None:
    # A key that is not in the catalogue renders its English msgid with the parameters
    assert messages.render("Moved %(n)s things", {"n": 3}, "fr") == "Moved 3 things"
    assert messages.render("Broken %(missing)s", {"n": 3}, "fr") == "Broken %(missing)s"


def test_live_events_are_localized_wherever_a_job_dict_sits() -> None:
    stored = messages.columns(msg(gettext_noop("Waiting for a worker")))
    event = {"type": "job.update", "seq": 5, "job": {"id": 1, **stored},
             "jobs": [{"id": 2, **messages.columns(msg(gettext_noop("Cancelled by %(actor)s"), actor="ada"))}]}

    french = messages.localize(event, "fr")

    assert french["job"]["status_message"] == "En attente d'un worker"
    assert french["jobs"][0]["status_message"] == "Annulée par ada"
    assert event["job"]["status_message"] == "Waiting for a worker"  # the shared event is not modified
    assert messages.localize(event, "en") is event
