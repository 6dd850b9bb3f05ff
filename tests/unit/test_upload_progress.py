"""The upload reconciler's reading of the upload server's progress lines."""

from __future__ import annotations

import io

from cdi.controller.upload import upload_progress
from importer.progress import Progress


def test_the_last_progress_line_of_a_running_upload_is_shown() -> None:
    log = "\n".join(['{"ready": true}', '{"progress": "12.50%", "phase": "transfer"}', "INFO something",
                     '{"progress": "40.25%", "phase": "transfer"}', "INFO more"])
    assert upload_progress(log) == "40.25%"


def test_no_progress_before_an_upload_or_after_a_refused_one() -> None:
    assert upload_progress('{"ready": true}\nINFO listening') is None
    refused = '{"progress": "40.25%"}\n{"uploadFailed": {"reason": "InvalidImage", "message": "x"}}'
    assert upload_progress(refused) is None
    assert upload_progress(refused + '\n{"progress": "3.00%"}') == "3.00%"  # the next try


def test_a_failed_or_discarded_attempt_never_reports_100_and_the_next_one_counts_alone() -> None:
    progress = Progress()
    progress.plan(["transfer"])
    progress.start_phase("transfer", 1000)
    progress.advance(313)
    progress.end(completed=False)  # cut off at byte 313
    assert progress.snapshot()["progress"] == "31.30%"
    progress.start_phase("transfer", 1000)  # the client tries again: its own bytes are the figure
    progress.advance(100)
    assert progress.snapshot()["progress"] == "10.00%"
    progress.advance(900)
    progress.end()
    assert progress.snapshot()["progress"] == "100.00%"
    lines = io.StringIO()
    refused = Progress(mode="json", stream=lines)
    refused.start_phase("transfer", 1000)
    refused.discard()  # the upload server forgets a refused attempt: no more lines until the next one
    before = lines.getvalue()
    refused.end()
    assert lines.getvalue() == before
