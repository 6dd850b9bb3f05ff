"""The pure parts of golden images: cron schedule math, import names, registry URLs, admission rules."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from cdi.api.dataimportcron import valid_schedule, validate_dataimportcron
from cdi.api.datasource import validate_datasource
from cdi.controller.dataimportcron import import_name, next_run, parse_stamp, stamp
from cdi.controller.registry_access import pinned_digest, untagged

DIGEST = "sha256:" + "ab12cd34ef56" + "0" * 52


def cron(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {"name": "fedora-cron"},
        "spec": {"schedule": "*/5 * * * *", "managedDataSource": "fedora",
                 "template": {"spec": {"source": {"registry": {"url": "docker://r.example:5000/fedora:latest"}},
                                       "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}}}
    base["spec"].update(spec)
    return base


@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("* * * * *", "2026-12-01T10:00:30Z", "2026-12-01T10:01:00Z"),  # every minute: the next full minute
    ("* * * * *", "2026-12-01T10:01:00Z", "2026-12-01T10:02:00Z"),  # strictly after, never the same instant
    ("30 1 * * 1", "2026-12-01T10:00:00Z", "2026-12-07T01:30:00Z"),  # CDI's example: Mondays 01:30
    ("0 0 * * 5", "2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"),  # Fridays across a year end
    ("@daily", "2026-12-01T10:00:00Z", "2026-12-02T00:00:00Z"),
    ("*/15 * * * *", "2026-12-01T10:14:59Z", "2026-12-01T10:15:00Z"),
])
def test_next_run_follows_the_cron_schedule(schedule: str, after: str, expected: str) -> None:
    assert stamp(next_run(schedule, parse_stamp(after))) == expected


def test_next_run_is_in_utc_whatever_the_timezone_given() -> None:
    from datetime import timedelta, timezone
    local = datetime(2026, 12, 1, 12, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert next_run("0 * * * *", local) == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "ok"), [
    ("* * * * *", True), ("30 1 * * 1", True), ("@weekly", True), ("0 0 1 1 *", True),
    ("61 * * * *", False), ("* * * *", False), ("* * * * * *", False), ("@every 1h", False), ("bogus", False),
])
def test_schedule_grammar_is_robfig_standard(schedule: str, ok: bool) -> None:
    assert valid_schedule(schedule) is ok


def test_import_name_is_the_datasource_and_twelve_hex_digits() -> None:
    assert import_name("fedora", DIGEST) == "fedora-ab12cd34ef56"
    with pytest.raises(ValueError):
        import_name("fedora", "sha256:abc")


def test_registry_urls_are_pinned_and_untagged() -> None:
    assert pinned_digest(f"docker://r:5000/a/b@{DIGEST}") == DIGEST
    assert pinned_digest("docker://r:5000/a/b:latest") is None
    assert pinned_digest("docker://r:5000/a/b@sha256:short") is None
    assert untagged("docker://r:5000/a/b:latest") == "docker://r:5000/a/b"
    assert untagged(f"docker://r:5000/a/b@{DIGEST}") == "docker://r:5000/a/b"
    assert untagged("docker://r:5000/a/b") == "docker://r:5000/a/b"
    assert untagged("docker://quay.io/kubevirt/fedora:39") == "docker://quay.io/kubevirt/fedora"


def test_dataimportcron_admission_says_what_is_wrong_as_cdi() -> None:
    assert validate_dataimportcron(cron(), None) == []
    cases = {
        "schedule": ("61 * * * *", 'spec.schedule: Invalid value: "61 * * * *": Illegal cron schedule'),
        "importsToKeep": (-1, "spec.importsToKeep: Invalid value: -1: Illegal ImportsToKeep value"),
        "garbageCollect": ("Sometimes", 'spec.garbageCollect: Invalid value: "Sometimes": Illegal GarbageCollect'
                                        ' value'),
        "managedDataSource": ("", 'spec.managedDataSource: Invalid value: "": Illegal ManagedDataSource value'),
    }
    for field, (value, message) in cases.items():
        assert validate_dataimportcron(cron(**{field: value}), None) == [message]
    long = cron(managedDataSource="x" * 64)
    assert validate_dataimportcron(long, None)[0].endswith("Name cannot be longer than 63 characters")
    http = cron()
    http["spec"]["template"]["spec"]["source"] = {"http": {"url": "http://x/y"}}
    assert validate_dataimportcron(http, None) == ['spec.template: Invalid value: "": Missing source']
    typed = cron()
    typed["spec"]["template"]["spec"]["contentType"] = "archive"
    assert "Unsettable fields" in validate_dataimportcron(typed, None)[0]
    scheme = cron()
    scheme["spec"]["template"]["spec"]["source"]["registry"]["url"] = "http://r/x"
    assert validate_dataimportcron(scheme, None)[0].startswith("spec.template.spec.source.registry.url: ")
    changed = copy.deepcopy(cron())
    changed["spec"]["importsToKeep"] = 5
    assert validate_dataimportcron(changed, cron()) == ["spec: Forbidden: Cannot update DataImportCron Spec"]
    assert validate_dataimportcron(copy.deepcopy(cron()), cron()) == []


def test_a_datasource_names_one_source() -> None:
    one = {"spec": {"source": {"pvc": {"namespace": "a", "name": "b"}}}}
    two = {"spec": {"source": {"pvc": {"namespace": "a", "name": "b"}, "snapshot": {"namespace": "a", "name": "c"}}}}
    assert validate_datasource(one, None) == []
    assert validate_datasource(two, None) == [
        'spec.source: Invalid value: "pvc, snapshot": a DataSource has at most one source']
