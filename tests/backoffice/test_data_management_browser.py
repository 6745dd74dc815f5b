"""The Data management page in a real browser: uvicorn + a real worker + Debian Chromium.

Each test does what a back-office person does and asserts what they would see.
"""

from __future__ import annotations

from typing import Any

import pytest

from ingestion.models import Total
from tests.backoffice.conftest import english_left, make_staff, sample, upload_sample
from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]

DM = "/admin/ingestion/year/data/"
WAIT = 60000  # ms: generous, the machine may be loaded


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


def data_rows(module: str, target: str) -> int:
    with open(sample(module, target), encoding="utf-8") as f:
        return sum(1 for line in f if line.strip()) - 1


def test_admin_index_leads_to_sluice_pages(open_page: Any) -> None:
    make_staff("admin", superuser=True)
    page = open_page("admin")

    # The index says Sluice and lists Sluice's own pages before the model lists
    assert page.inner_text("#site-name") == "Sluice"
    first = page.locator("#content-main > div.module").first
    assert first.get_attribute("id") == "sluice-pages"
    assert "Data management" in first.inner_text() and "Operations console" in first.inner_text()
    # "View site" led to a 404: it is gone
    assert page.get_by_text("View site").count() == 0

    # Every model list links to them too
    page.goto(page.url.split("/admin/")[0] + "/admin/pipelines/job/")
    page.click("#sluice-nav >> text=Data management")
    page.wait_for_selector("h1:has-text('Data management')", timeout=WAIT)
    page.click("#sluice-nav >> text=Operations console")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)


def test_upload_from_the_page_shows_live_progress_and_a_success_entry(open_page: Any, synced_year: Any) -> None:
    synced_year(2031)
    upload_sample(2031, "headcount", "factors")
    make_staff("admin", superuser=True)
    page = open_page("admin", DM + "?year=2031")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    row = 'tr.dm-target[data-module="headcount"][data-target="data_entries"]'

    # When the operator uploads the sample file from the row's file picker
    page.set_input_files(f"{row} input.dm-file", str(sample("headcount", "data_entries")))

    # Then the row's bar appears and reaches 100 % with the pipeline's success
    page.wait_for_selector(f'{row} .dm-live:not([hidden])', timeout=WAIT)
    page.wait_for_selector(f'{row} .dm-live[data-status=success] .live-pct:has-text("100%")', timeout=WAIT)
    drawn = page.evaluate("window.sluiceDm.trace['t:headcount:data_entries']")
    # (the bar started empty: upload bytes, then the pipeline from queued to finished)
    assert drawn[0] == 0 and drawn[-1] == 100

    # ...the row shows the upload and its result
    expected = data_rows("headcount", "data_entries")
    page.wait_for_selector(f'{row} [data-role=result] .chip.success:has-text("{expected:,} loaded, 0 rejected")',
                           timeout=WAIT)
    assert "headcount_data_entries.csv" in page.inner_text(f"{row} [data-role=upload]")
    assert page.inner_text(f"{row} [data-role=rows]") == f"{expected:,}"

    # ...and the history panel gains a success entry with the right counts
    entry = page.locator('li.dm-entry.look-success[data-module=headcount][data-target=data_entries]')
    entry.locator("> details > summary").click()
    assert entry.locator("[data-stat=rows_loaded]").inner_text() == f"{expected:,}"
    assert entry.locator("[data-stat=rows_rejected]").inner_text() == "0"
    shot(page, "data-management.png")


def test_reload_mid_run_reattaches_and_finishes(open_page: Any, synced_year: Any) -> None:
    from pipelines import services as engine

    synced_year(2032)
    make_staff("admin", superuser=True)
    page = open_page("admin", DM + "?year=2032")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    row = 'tr.dm-target[data-module="purchases"][data-target="factors"]'

    # Given an upload waiting on a paused queue
    engine.queue_pause(queue="ingest")
    page.set_input_files(f"{row} input.dm-file", str(sample("purchases", "factors")))
    page.wait_for_selector(f"{row} .dm-live[data-pipeline]", timeout=WAIT)

    # When the page is reloaded mid-run, the bar is there again (from the active pipelines)
    page.reload()
    page.wait_for_selector(f"{row} .dm-live:not([hidden])", timeout=WAIT)
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)

    # Then it follows the run to its end once the queue resumes
    engine.queue_resume(queue="ingest")
    page.wait_for_selector(f'{row} .dm-live[data-status=success] .live-pct:has-text("100%")', timeout=WAIT)
    expected = data_rows("purchases", "factors")
    page.wait_for_selector(f'{row} [data-role=result] .chip.success:has-text("{expected} loaded")', timeout=WAIT)


def _bad_rows_file() -> bytes:
    lines = sample("headcount", "data_entries").read_bytes().splitlines(keepends=True)[:21]  # header + 20 rows
    return b"".join(lines) + b"ADM-0294,staff,professor,two,\nNOPE-9,staff,professor,1,\n"


def test_bad_rows_give_a_warning_entry_with_row_errors_and_errors_csv(open_page: Any, synced_year: Any) -> None:
    import csv
    import io

    from ingestion.models import Upload
    from pipelines.models import Job

    synced_year(2033)
    make_staff("admin", superuser=True)
    page = open_page("admin", DM + "?year=2033")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    row = 'tr.dm-target[data-module="headcount"][data-target="data_entries"]'
    jobs_before = Job.objects.count()

    # A file with a wrong header is refused in the page, before any job exists
    wrong = b"unit_id,det,category,comment\nENG-0001,staff,professor,x\n"
    page.set_input_files(f"{row} input.dm-file", files=[{"name": "wrong.csv", "mimeType": "text/csv",
                                                           "buffer": wrong}])
    page.wait_for_selector(f'{row} [data-role=check]:has-text("missing required column(s): fte")', timeout=WAIT)
    assert Upload.objects.count() == 0 and Job.objects.count() == jobs_before
    assert page.locator(f"{row} .dm-actions .dm-live").is_hidden()

    # A file with two bad rows among twenty good ones loads with a warning
    page.set_input_files(f"{row} input.dm-file", files=[{"name": "bad-rows.csv", "mimeType": "text/csv",
                                                           "buffer": _bad_rows_file()}])
    page.wait_for_selector(f"{row} [data-role=result] .chip.warning:has-text('20 loaded, 2 rejected')", timeout=WAIT)
    assert page.inner_text(f"{row} [data-role=check]") == ""  # the earlier refusal is gone

    # The history entry looks like a warning, and its row errors name row and column
    entry = page.locator("li.dm-entry.look-warning[data-job-type=csv_ingest]")
    entry.locator("> details > summary").click()
    cells = entry.locator("table.dm-row-errors tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")
    assert [c[:2] for c in cells] == [["21", "fte"], ["22", "unit_id"]]
    assert "NOPE-9" in cells[1][2]
    assert entry.locator("[data-stat=rows_rejected]").inner_text() == "2"
    # ...and look different at a glance from a success
    success = page.locator("li.dm-entry.look-success").first
    assert entry.locator(".chip").first.evaluate("e => getComputedStyle(e).backgroundColor") != \
        success.locator(".chip").first.evaluate("e => getComputedStyle(e).backgroundColor")
    entry.locator("details.dm-raw > summary").click()
    assert '"rows_rejected": 2' in entry.locator("details.dm-raw pre").inner_text()
    entry.locator("details.dm-updates > summary").click()
    entry.locator("table.dm-job-updates tbody tr").first.wait_for(timeout=WAIT)
    states = entry.locator("table.dm-job-updates tbody tr td:nth-child(4)").all_inner_texts()
    assert states[0] == "queued" and states[-1] == "warning"
    shot(page, "data-management-row-errors.png")

    # errors.csv downloads and holds every rejected row
    with page.expect_download(timeout=WAIT) as download:
        entry.locator("a.dm-errors-csv").click()
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert [(r["row"], r["column"]) for r in rows] == [("21", "fte"), ("22", "unit_id")]

    # "Show only problems" leaves the warning and hides the successes; the result filter narrows alike
    with page.expect_navigation(timeout=WAIT):
        page.check("#dm-filter-problems")
    looks = page.locator("#dm-history li.dm-entry").evaluate_all("es => es.map(e => e.className)")
    assert looks and all("look-warning" in c or "look-error" in c for c in looks), looks
    with page.expect_navigation(timeout=WAIT):
        page.select_option("#dm-filter-result", "warning")
    looks = page.locator("#dm-history li.dm-entry").evaluate_all("es => es.map(e => e.className)")
    assert looks and all("look-warning" in c for c in looks), looks
    assert page.locator("#dm-history li.dm-entry[data-job-type=csv_ingest][data-module=headcount]").count() == 1


def test_create_year_then_open_it_once_complete(open_page: Any) -> None:
    from ingestion.models import Year
    from ingestion.modules import MODULES, TARGETS

    make_staff("admin", superuser=True)
    page = open_page("admin", DM)
    assert "No year yet." in page.inner_text("#content-main")

    # Creating a year from the page shows its unit sync live, phases and percentage
    page.fill("#dm-new-year", "2034")
    page.click("#dm-create-year button[type=submit]")
    page.wait_for_url("**?year=2034&watch=*", timeout=WAIT)
    page.wait_for_selector('.dm-live[data-slot=year][data-status=success] .live-pct:has-text("100%")', timeout=WAIT)
    page.wait_for_selector("#dm-units:has-text('Units synced')", timeout=WAIT)
    assert page.evaluate("window.sluiceDm.trace.year")[-1] == 100

    # "Open year for users" is disabled and says why, module by module
    button = page.locator("#dm-open-year")
    assert button.is_disabled()
    reasons = page.locator("#dm-reasons li").all_inner_texts()
    assert len(reasons) == len(MODULES) and all("no data entries loaded" in r for r in reasons)
    assert page.inner_text("#dm-year-chip") == "Not open to users"
    shot(page, "data-management-year-incomplete.png")

    # When every module is complete (uploads by someone else), the page follows live
    for target in reversed(TARGETS):
        for module in MODULES:
            upload_sample(2034, module, target)
    page.wait_for_selector("#dm-open-year:not([disabled])", timeout=WAIT)
    assert page.locator("#dm-reasons").count() == 0

    # Opening asks for confirmation, then the chip flips
    page.once("dialog", lambda d: d.accept())
    button.click()
    page.wait_for_selector("#dm-year-chip[data-open=true]", timeout=WAIT)
    assert page.inner_text("#dm-year-chip") == "Open to users"
    assert Year.objects.get(pk=2034).is_open
    assert page.locator("#dm-close-year").is_visible()


def test_viewer_sees_everything_and_no_button_module_operator_only_their_modules(
    open_page: Any, synced_year: Any, browser: Any
) -> None:
    synced_year(2035)
    upload_sample(2035, "headcount", "factors")
    upload_sample(2035, "buildings", "factors")
    make_staff("viewer", perms=("view_console",))
    make_staff("ops", perms=("operate",), modules=("buildings",))
    actions = "#dm-create-year, #dm-open-year, #dm-close-year, button.dm-upload, button.dm-recalc, input.dm-file"

    # A viewer sees every module and the whole history, and no button that would 403
    page = open_page("viewer", DM + "?year=2035")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert page.locator("#dm-modules > tbody[data-module]").count() == 5
    assert page.locator(actions).count() == 0
    assert page.locator("li.dm-entry[data-module=headcount]").count() > 0
    assert page.locator("a:has-text('Template')").count() == 10  # reading the schema is harmless

    # An operator granted one module sees and acts on that module only
    page = open_page("ops", DM + "?year=2035")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert page.locator("#dm-modules > tbody[data-module]").evaluate_all("bs => bs.map(b => b.dataset.module)") == \
        ["buildings"]
    assert page.locator("button.dm-upload").count() == 2 and page.locator("button.dm-recalc").count() == 1
    assert page.locator("#dm-create-year, #dm-open-year, #dm-close-year").count() == 0
    assert [r.split(":")[0] for r in page.locator("#dm-reasons li").all_inner_texts()] == ["Buildings"]
    modules = set(page.locator("li.dm-entry").evaluate_all("es => es.map(e => e.dataset.module)"))
    assert modules == {"buildings"}

    # ...and can use it with the keyboard: Tab to Recalculate, Enter, the bar runs to the end
    page.locator("button.dm-recalc").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector('.dm-live[data-slot="m:buildings"][data-status] .live-pct:has-text("100%")',
                           timeout=WAIT)

    # With JavaScript off, in dark mode, the page is a readable server-rendered page
    static = browser.new_context(java_script_enabled=False, color_scheme="dark",
                                 viewport={"width": 1366, "height": 900})
    static.add_cookies(page.context.cookies())
    plain = static.new_page()
    plain.goto(page.url)
    assert "Buildings" in plain.inner_text("#dm-modules")
    assert plain.locator("li.dm-entry[data-module=buildings]").count() > 0
    bg = plain.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), bg  # the admin's dark theme applies
    shot(plain, "data-management-nojs-dark.png")
    static.close()


def test_uploads_and_years_admin_pages(open_page: Any, synced_year: Any) -> None:
    from ingestion.models import Upload

    synced_year(2036)
    upload_sample(2036, "equipment", "factors")
    upload = Upload.objects.get(year_id=2036, module="equipment")
    make_staff("admin", superuser=True)
    page = open_page("admin", "/admin/ingestion/upload/")

    # The Uploads list says what was uploaded, by whom, its fingerprint and result
    row = page.locator("#result_list tbody tr").first
    text = row.inner_text()
    for part in ("2036", "equipment", "factors", "equipment_factors.csv", upload.sha256[:12], "success"):
        assert part in text, (part, text)

    # Its detail links the pipeline and the stored file, and runs it again
    page.goto(page.url + f"{upload.pk}/change/")
    assert page.locator(f"a[href='/api/v1/uploads/{upload.pk}/file/']").count() == 1
    assert str(upload.pipeline_id) in page.inner_text("#content-main")
    with page.expect_download(timeout=WAIT) as download:
        page.click(f"a[href='/api/v1/uploads/{upload.pk}/file/']")
    assert open(download.value.path(), "rb").read() == sample("equipment", "factors").read_bytes()
    page.click("#upload-rerun button")
    # ...landing on Data management, which follows the new run to its end
    page.wait_for_url("**/admin/ingestion/year/data/?year=2036&watch=*", timeout=WAIT)
    page.wait_for_selector('.dm-live[data-slot="t:equipment:factors"][data-status=success] .live-pct:has-text("100%")',
                           timeout=WAIT)
    assert Upload.objects.get(pk=upload.pk).pipeline_id == upload.pipeline_id  # the upload row is unchanged

    # The Years list says open or closed and what is missing
    page.goto(page.url.split("/admin/")[0] + "/admin/ingestion/year/")
    row = page.locator("#result_list tbody tr").first.inner_text()
    assert "2036" in row and "no data entries loaded" in row
    shot(page, "years-admin.png", full_page=False)


def test_the_french_page_has_no_english_left(open_page: Any, synced_year: Any) -> None:
    synced_year(2037)
    upload_sample(2037, "headcount", "factors")
    make_staff("admin", superuser=True)
    # An English browser; the admin's language selector switches the pages to French
    page = open_page("admin", DM + "?year=2037", locale="en-US")
    assert page.inner_text("h1") == "Data management"
    with page.expect_navigation(timeout=WAIT):
        page.select_option("#sluice-language-select", "fr")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)

    assert page.inner_text("h1") == "Gestion des données"
    assert page.inner_text("#live-status") == "en direct"
    assert page.inner_text("#dm-year-chip") == "Pas encore ouverte aux utilisateurs"
    assert "Effectifs" in page.inner_text("#dm-modules")
    # The job messages the workers wrote are in French too, in the history and in
    # every recorded update of a job (kinds, phases, messages)
    ingest = page.locator('#dm-history li.dm-entry[data-job-type="factor_ingest"]').first
    assert ingest.locator(".dm-summary-msg").inner_text() == "8 lignes chargées"
    ingest.locator("summary").first.click()
    ingest.locator("details.dm-updates summary").click()
    ingest.locator("table.dm-job-updates").wait_for(timeout=WAIT)
    updates = ingest.locator("table.dm-job-updates").inner_text()
    assert "En attente d'un worker" in updates and "chargement" in updates and "terminé" in updates
    left = english_left(page)
    assert left == [], left
    shot(page, "data-management-fr.png")


def test_export_and_validation_from_the_page_show_progress_then_the_file_and_findings(
    open_page: Any, synced_year: Any
) -> None:
    synced_year(2031)
    upload_sample(2031, "headcount", "factors")
    upload_sample(2031, "headcount", "data_entries")
    make_staff("admin", superuser=True)
    page = open_page("admin", DM + "?year=2031")
    page.wait_for_selector("#live-status[data-status=live]", timeout=WAIT)
    assert "No export of this year yet." in page.inner_text("#dm-exports")

    # When the operator asks for an XLSX export
    page.click("#dm-export-xlsx")

    # Then its bar reaches 100 % with a success, and the exports table offers the file
    page.wait_for_selector('.dm-live[data-slot=export][data-status=success] .live-pct:has-text("100%")',
                           timeout=WAIT)
    page.wait_for_selector("#dm-exports tbody tr .chip.success", timeout=WAIT)
    # A locator, not an element handle: the table re-renders on each of the export's live
    # events, and a handle to the replaced link would be detached when clicked.
    link = page.locator("#dm-exports a.dm-export-file")
    link.wait_for(timeout=WAIT)
    name = link.inner_text()
    assert name.endswith(".xlsx")
    row = page.inner_text("#dm-exports tbody tr")
    # (its rows: every total of the year and every data entry)
    rows = Total.objects.filter(year=2031).count() + data_rows("headcount", "data_entries")
    assert "XLSX" in row and "success" in row and f"{rows:,}" in row
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == name

    # When the operator validates the year (four modules have no data yet)
    assert "Never validated." in page.inner_text("#dm-validation-summary")
    page.click("#dm-validate")

    # Then its bar ends at 100 %, its findings list the incomplete modules, and the year
    # cannot open with the validation named among the reasons
    page.wait_for_selector('.dm-live[data-slot=validation] .live-pct:has-text("100%")', timeout=WAIT)
    page.wait_for_selector("#dm-findings[open] tr[data-severity=error][data-check=modules_complete]", timeout=WAIT)
    assert "Buildings is incomplete: no data entries loaded" in page.inner_text("#dm-findings")
    assert "4 errors" in page.inner_text("#dm-validation-summary")
    assert "latest validation" in page.inner_text("#dm-reasons")
    shot(page, "data-management-export.png", full_page=False)
