"""The upload reconciler's reading of the upload server's progress lines."""

from __future__ import annotations

from cdi.controller.upload import upload_progress


def test_the_last_progress_line_of_a_running_upload_is_shown() -> None:
    log = "\n".join(['{"ready": true}', '{"progress": "12.50%", "phase": "transfer"}', "INFO something",
                     '{"progress": "40.25%", "phase": "transfer"}', "INFO more"])
    assert upload_progress(log) == "40.25%"


def test_no_progress_before_an_upload_or_after_a_refused_one() -> None:
    assert upload_progress('{"ready": true}\nINFO listening') is None
    refused = '{"progress": "40.25%"}\n{"uploadFailed": {"reason": "InvalidImage", "message": "x"}}'
    assert upload_progress(refused) is None
    assert upload_progress(refused + '\n{"progress": "3.00%"}') == "3.00%"  # the next try
