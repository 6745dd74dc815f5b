"""``schemathesis run --checks all`` against a live server with a real worker (issue 18).

Every operation, every check, every phase: examples, coverage (boundary and invalid
values of each parameter and body), fuzzing and the stateful phase, which follows the
document's OpenAPI links (create a year → its pipeline → its jobs → their errors,
cancel, retry; upload → upload, file, rerun; list → pause → resume). Bounded for CI by
``--max-examples`` and a fixed seed; the full run and its numbers are in docs/API.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT
from tests.support.browser import Server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

CONFIG = ROOT / "schemathesis.toml"  # one worker, stateful depth, the token endpoint's 400
MAX_EXAMPLES = 3
SEED = 18


def test_schemathesis_all_checks_pass_against_the_live_api(live_api: Server, tmp_path: Path) -> None:
    token = Token.objects.create(user=User.objects.get(username="live"))
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")), "--no-color", "--config-file", str(CONFIG),
            "run", f"{live_api.base}/api/schema/", "--checks", "all",
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
            "--request-timeout", "30", "-H", f"Authorization: Token {token.key}",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    (ROOT / ".var" / "test-logs" / "schemathesis-live.log").write_text(output)  # the whole report, phase times
    report = output[output.find("= FAILURES ="):][:12000]  # what failed and the curl to reproduce it
    assert result.returncode == 0, report
    # Every phase ran (a phase with nothing to do says "skipped"), the stateful one through links.
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅\s+{phase} \(in", output), f"{phase} phase did not pass:\n{output[-6000:]}"
    covered = re.search(r"Links?:\s+(\d+) covered / (\d+) selected", output)
    assert covered and int(covered.group(1)) > 0, output[-6000:]
