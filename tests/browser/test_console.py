"""The web console in a real browser (headless Chromium, Selenium) against a real ``cdi serve``.

The tests run in order on one browser and one server: sign in with the one-time link (which then
refuses a second use), import a disk from a local http server and watch it reach Succeeded with the
right digest, upload a file and check its digest, start a VM from the imported disk and read its
boot marker in the page's serial console, see a user without rights get a clear refusal, and check
the pages with axe-core. Screenshots of each step: ``test-artifacts/console/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.kube import PVC
from importer.digest import volume_digest
from tests.bootdisk import build_boot_disk
from tests.browser.conftest import ConsoleServe
from tests.support import images
from tests.support.httpserver import HttpServer, Route

pytestmark = pytest.mark.slow

DIGEST = "cdi.kubevirt.io/storage.import.volumeDigest"
MARKER = "CDI-BOOT-OK"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, *, browser: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    logs = ""
    if browser is not None:
        logs = "\n".join(str(e) for e in browser.get_log("browser"))[-3000:]
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\nbrowser console:\n{logs}")


def text_of(browser: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(browser.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def click(browser: Any, css: str) -> None:
    """Click the element matching ``css``; live views re-render rows, so a found element may go stale."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            browser.find_element("css selector", css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept going stale")


def enabled(browser: Any, css: str) -> bool:
    script = "const e = document.querySelector(arguments[0]); return !!e && !e.disabled"
    return bool(browser.execute_script(script, css))


def fill(browser: Any, element_id: str, value: str) -> None:
    field = browser.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def expected_digest(image: Path, volume: Path, work: Path) -> str:
    """The digest of the volume holding ``image`` followed by zeros up to the volume's size."""
    reference = work / f"{image.name}.ref"
    shutil.copyfile(image, reference)
    os.truncate(reference, volume.stat().st_size)
    return volume_digest(str(reference))


def volume_file(serve: ConsoleServe, name: str) -> Path:
    pvc = serve.client.get(PVC, "default", name)
    path = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    return path / "disk.img" if path.is_dir() else path


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpServer, Path]]:
    root = tmp_path_factory.mktemp("console-disks")
    raw = build_boot_disk(root / "boot")
    qcow2 = root / "boot.qcow2"
    images.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    with HttpServer() as server:
        server.add("/boot.qcow2", Route(path=str(qcow2)))
        server.add("/missing.qcow2", Route(status=404))
        yield server, raw


def test_sign_in_link_works_once(serve: ConsoleServe, browser: Any, shot: Callable[[str], Path]) -> None:
    browser.get(serve.sign_in_link)
    wait_for("the signed-in page", lambda: "Signed in as admin" in text_of(browser, "#whoami"), browser=browser)
    shot("signed-in")
    assert "code=" not in browser.current_url, "the code must leave the address bar"
    assert browser.execute_script("return window.localStorage.length") == 0
    assert browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.getItem('cdi-console-token')") == \
        (serve.data_dir / "token").read_text().strip()
    # the same link again, in a fresh session: the code is spent
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")
    browser.get(serve.sign_in_link)
    wait_for("the refusal of a spent code", lambda: "already used" in text_of(browser, "#signin-error"),
             browser=browser)
    shot("sign-in-link-used-twice")
    assert not browser.find_element("id", "app").is_displayed()
    # a pasted token that is wrong says so; the admin's token signs in
    fill(browser, "token", "not-a-token")
    browser.find_element("css selector", "#signin-form button").click()
    wait_for("the wrong token refused", lambda: "not accepted" in text_of(browser, "#signin-error"), browser=browser)
    fill(browser, "token", (serve.data_dir / "token").read_text().strip())
    browser.find_element("css selector", "#signin-form button").click()
    wait_for("the signed-in page", lambda: "Signed in as admin" in text_of(browser, "#whoami"), browser=browser)


def test_import_from_url_reaches_succeeded_with_its_digest(serve: ConsoleServe, browser: Any,
                                                           disks: tuple[HttpServer, Path],
                                                           shot: Callable[[str], Path], tmp_path: Path) -> None:
    server, raw = disks
    # a URL that answers 404: the row says why it failed, and the event list has it on top
    fill(browser, "create-name", "gone")
    fill(browser, "create-url", server.url("/missing.qcow2"))
    fill(browser, "create-size", "64Mi")
    browser.find_element("css selector", "#create-form button[type=submit]").click()
    gone = 'tr[data-dv="gone"]'
    wait_for("Failed", lambda: text_of(browser, f"{gone} .phase") == "Failed", 60, browser=browser)
    failing = wait_for("the failing condition's message", lambda: text_of(browser, f"{gone} .failing"),
                       browser=browser)
    assert "404" in failing, failing
    wait_for("the ImportFailed event", lambda: "ImportFailed" in text_of(browser, "#event-rows"), browser=browser)
    times = browser.execute_script(
        "return [...document.querySelectorAll('#event-rows time')].map((t) => t.getAttribute('datetime'))")
    assert len(times) > 3 and times == sorted(times, reverse=True), times
    shot("import-failed-404")
    fill(browser, "create-name", "bootdisk")
    fill(browser, "create-url", server.url("/boot.qcow2"))
    fill(browser, "create-size", "64Mi")
    browser.find_element("css selector", "#create-form button[type=submit]").click()
    wait_for("the created message", lambda: "Created DataVolume default/bootdisk" in text_of(browser, "#create-status"),
             browser=browser)
    row = 'tr[data-dv="bootdisk"]'
    wait_for("the new row, from the watch", lambda: text_of(browser, row), browser=browser)
    shot("import-started")
    wait_for("Succeeded", lambda: text_of(browser, f"{row} .phase") == "Succeeded", 90, browser=browser)
    digest = wait_for("the digest", lambda: text_of(browser, f"{row} .digest"), browser=browser)
    shot("import-succeeded")
    assert "100" in text_of(browser, f"{row} .progress")
    assert digest == serve.dv("bootdisk")["metadata"]["annotations"][DIGEST]
    assert digest == expected_digest(raw, volume_file(serve, "bootdisk"), tmp_path)


def test_upload_a_file_and_check_its_digest(serve: ConsoleServe, browser: Any, shot: Callable[[str], Path],
                                            tmp_path: Path) -> None:
    from cdi.kube import DATAVOLUME

    # an empty file is refused in the page, before a DataVolume is created
    empty = tmp_path / "empty.img"
    empty.touch()
    browser.find_element("id", "upload-file").send_keys(str(empty))
    browser.find_element("css selector", "#upload-form button[type=submit]").click()
    wait_for("the empty file's refusal", lambda: "The file is empty" in text_of(browser, "#upload-error"),
             browser=browser)
    assert serve.client.find(DATAVOLUME, "default", "empty") is None
    fill(browser, "upload-name", "")
    fill(browser, "upload-size", "")
    image = images.make_raw(tmp_path / "laptop-disk.raw", 6 << 20, seed=7)
    browser.find_element("id", "upload-file").send_keys(str(image))
    assert browser.find_element("id", "upload-name").get_attribute("value") == "laptop-disk"
    assert browser.find_element("id", "upload-size").get_attribute("value") == "6Mi"
    fill(browser, "upload-size", "8Mi")
    browser.find_element("css selector", "#upload-form button[type=submit]").click()
    wait_for("the upload to be received and written",
             lambda: "written into" in text_of(browser, "#upload-status") or text_of(browser, "#upload-error"),
             60, browser=browser)
    shot("upload-received")
    assert not text_of(browser, "#upload-error"), text_of(browser, "#upload-error")
    # the bar is complete only once the DataVolume Succeeded
    assert browser.find_element("id", "upload-progress").get_attribute("value") == str(image.stat().st_size)
    assert f"{6.0:.1f} MiB of 6.0 MiB sent" in text_of(browser, "#upload-progress-label")
    row = 'tr[data-dv="laptop-disk"]'
    wait_for("Succeeded", lambda: text_of(browser, f"{row} .phase") == "Succeeded", 60, browser=browser)
    digest = wait_for("the digest", lambda: text_of(browser, f"{row} .digest"), browser=browser)
    shot("upload-succeeded")
    assert digest == expected_digest(image, volume_file(serve, "laptop-disk"), tmp_path)


def test_a_dropped_upload_continues_where_it_stopped(serve: ConsoleServe, browser: Any,
                                                     shot: Callable[[str], Path], tmp_path: Path) -> None:
    import signal

    from cdi.kube import POD

    image = images.make_raw(tmp_path / "cut-disk.raw", 16 << 20, seed=11, data_ratio=0.7)
    fill(browser, "upload-name", "cut-disk")
    fill(browser, "upload-size", "24Mi")
    browser.find_element("id", "upload-file").send_keys(str(image))
    # a slow link, so that the upload is still running when its server is killed
    browser.set_network_conditions(offline=False, latency=1, download_throughput=64 << 20,
                                   upload_throughput=4 << 20)
    try:
        browser.find_element("css selector", "#upload-form button[type=submit]").click()

        def resume_point() -> bool:
            pvc = serve.client.find(PVC, "default", "cut-disk")
            root = (pvc or {}).get("metadata", {}).get("annotations", {}).get("cdi.kubevirt.io/local-path")
            return bool(root) and (Path(root) / ".disk.img.cdi-resume.json").exists()

        wait_for("a durable resume point", resume_point, 60, browser=browser)
        pod = serve.client.get(POD, "default", "cdi-upload-cut-disk")
        os.kill(int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://")), signal.SIGKILL)
        shot("upload-server-killed")
        wait_for("the upload to be received",
                 lambda: "received" in text_of(browser, "#upload-status") or text_of(browser, "#upload-error"),
                 90, browser=browser)
    finally:
        browser.delete_network_conditions()
    status = text_of(browser, "#upload-status")
    shot("upload-continued")
    assert not text_of(browser, "#upload-error"), text_of(browser, "#upload-error")
    assert "continued from byte" in status, status
    starts = [int(x) for x in status.split("continued from byte ")[1].split(")")[0].split(", ")]
    assert starts and all(0 < s < image.stat().st_size for s in starts), status
    row = 'tr[data-dv="cut-disk"]'
    wait_for("Succeeded", lambda: text_of(browser, f"{row} .phase") == "Succeeded", 60, browser=browser)
    digest = wait_for("the digest", lambda: text_of(browser, f"{row} .digest"), browser=browser)
    assert digest == expected_digest(image, volume_file(serve, "cut-disk"), tmp_path)


def test_start_a_vm_and_read_its_console(serve: ConsoleServe, browser: Any, shot: Callable[[str], Path]) -> None:
    from selenium.webdriver.common.keys import Keys

    serve.apply({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "webvm"},
                 "spec": {"runStrategy": "Halted", "template": {"spec": {
                     "terminationGracePeriodSeconds": 5,
                     "domain": {"memory": {"guest": "256Mi"},
                                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                     "volumes": [{"name": "root", "dataVolume": {"name": "bootdisk"}}]}}}})
    row = 'tr[data-vm="webvm"]'
    wait_for("the VM row", lambda: text_of(browser, f"{row} .status") == "Stopped", browser=browser)
    click(browser, f'{row} button[data-action="start"]')
    console = f'{row} button[data-action="console"]'
    wait_for("the instance running", lambda: enabled(browser, console), 60, browser=browser)
    click(browser, console)
    wait_for("the console connected", lambda: "Connected" in text_of(browser, "#console-status"), browser=browser)
    wait_for("the boot marker in the page's terminal", lambda: MARKER in text_of(browser, "#terminal .xterm-rows"),
             90, browser=browser)
    browser.find_element("css selector", "#terminal .xterm-helper-textarea").send_keys("hello-web" + Keys.ENTER)
    wait_for("the guest's echo", lambda: "cdi-echo: hello-web" in text_of(browser, "#terminal .xterm-rows"),
             30, browser=browser)
    shot("vm-console")
    assert text_of(browser, f"{row} .status") == "Running"


def test_a_user_without_rights_sees_a_clear_refusal(serve: ConsoleServe, browser: Any,
                                                    shot: Callable[[str], Path]) -> None:
    out = subprocess.run([sys.executable, "-m", "cdi.cli.main", "user", "add", "nobody", "--data-dir",
                          str(serve.data_dir)], capture_output=True, text=True, check=True).stdout
    import yaml

    kubeconfig = Path(out.split("kubeconfig: ")[1].split()[0])
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    browser.find_element("id", "console-close").click()
    browser.find_element("id", "sign-out").click()
    fill(browser, "token", token)
    browser.find_element("css selector", "#signin-form button").click()
    wait_for("nobody signed in", lambda: "Signed in as nobody" in text_of(browser, "#whoami"), browser=browser)
    refusal = wait_for("the refusal", lambda: text_of(browser, "#volumes-error"), browser=browser)
    assert refusal.startswith("Not allowed:"), refusal
    assert 'User "nobody" cannot list resource "datavolumes"' in refusal, refusal
    assert 'cannot list resource "virtualmachines"' in wait_for("VMs refusal", lambda: text_of(browser, "#vms-error"))
    assert 'cannot list resource "events"' in wait_for("events refusal", lambda: text_of(browser, "#events-error"))
    assert not browser.find_elements("css selector", 'tr[data-dv="bootdisk"]'), "nothing of default may show"
    fill(browser, "create-name", "not-allowed")
    browser.find_element("id", "create-source").send_keys("Blank")
    browser.find_element("css selector", "#create-form button[type=submit]").click()
    create = wait_for("the create refusal", lambda: text_of(browser, "#create-error"), browser=browser)
    assert 'User "nobody" cannot create resource "datavolumes"' in create, create
    shot("no-rights")
    from cdi.kube import DATAVOLUME

    assert serve.client.find(DATAVOLUME, "default", "not-allowed") is None
    # the serial console of the admin's running VM, asked for with this token: refused with kube's words
    closed = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const b64 = btoa(sessionStorage.getItem('cdi-console-token'))
          .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
        const path = '/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/webvm/console';
        const ws = new WebSocket(`wss://${location.host}${path}`,
                                 ['plain.kubevirt.io', 'base64url.bearer.authorization.k8s.io.' + b64]);
        ws.onclose = (ev) => done({code: ev.code, reason: ev.reason});""")
    assert closed["code"] == 4403, closed
    assert 'User "nobody" cannot get resource "virtualmachineinstances/console"' in closed["reason"], closed


def test_pages_pass_axe_without_serious_violations(serve: ConsoleServe, browser: Any,
                                                   shot: Callable[[str], Path]) -> None:
    def axe() -> list[dict[str, Any]]:
        browser.execute_script("""
            if (!window.axe) { const s = document.createElement('script'); s.src = 'vendor/axe-core/axe.min.js';
                               document.head.append(s); }""")
        wait_for("axe-core loaded", lambda: browser.execute_script("return !!window.axe"), browser=browser)
        result = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            axe.run(document).then((r) => done({violations: r.violations, passes: r.passes.length}),
                                   (e) => done({violations: [{id: 'axe-error', impact: 'critical', help: String(e),
                                                              nodes: []}], passes: 0}));""")
        assert result["passes"] > 10, "axe-core checked next to nothing"
        return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]

    # the signed-in page as the admin, with volumes, a VM and events shown
    browser.find_element("id", "sign-out").click()
    fill(browser, "token", (serve.data_dir / "token").read_text().strip())
    browser.find_element("css selector", "#signin-form button").click()
    wait_for("rows", lambda: text_of(browser, 'tr[data-dv="bootdisk"] .phase') == "Succeeded", browser=browser)
    console = 'tr[data-vm="webvm"] button[data-action="console"]'
    wait_for("the VM's console button", lambda: enabled(browser, console), browser=browser)
    click(browser, console)  # the terminal is checked too
    wait_for("the console connected", lambda: "Connected" in text_of(browser, "#console-status"), browser=browser)
    signed_in = axe()
    # Stop from the page: the VM goes Stopped and its instance away
    click(browser, 'tr[data-vm="webvm"] button[data-action="stop"]')
    wait_for("the VM stopped", lambda: text_of(browser, 'tr[data-vm="webvm"] .status') == "Stopped", 60,
             browser=browser)
    assert text_of(browser, 'tr[data-vm="webvm"] .vmi-phase') == "none"
    browser.find_element("id", "sign-out").click()
    signed_out = axe()
    shot("axe-checked")
    for found in (signed_in, signed_out):
        assert not found, [(v["id"], v["impact"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in found]
