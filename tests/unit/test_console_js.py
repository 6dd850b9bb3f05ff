"""The console page's own logic, run by node against the page's modules (no browser): a namespace left
behind never draws late answers, refusals are shown, a bar is complete only on success, an empty file
is refused before anything is created. ``fetch`` is the one seam replaced (a slow network)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cdi.console.server import static_dir

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs)")


def run_js(tmp_path: Path, script: str) -> object:
    """Runs script as an ES module beside copies of the page's modules; its last line printed is JSON."""
    for js in static_dir().glob("*.js"):
        shutil.copy(js, tmp_path / js.name)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "t.js").write_text(script)
    out = subprocess.run([NODE or "node", "t.js"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_late_answer_for_the_namespace_left_is_not_drawn(tmp_path: Path) -> None:
    result = run_js(tmp_path, """
globalThis.sessionStorage = { getItem: () => 't' };
const pending = [];
// a slow network: each answer comes when the test says so; an aborted request rejects, as in a browser
globalThis.fetch = (url, opts = {}) => new Promise((resolve, reject) => {
  pending.push({ url, signal: opts.signal, answer: (items) => resolve(new Response(JSON.stringify(
    { metadata: { resourceVersion: '1' }, items: items.map((n) => ({ metadata: { name: n } })) }))) });
  if (opts.signal) opts.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
});
const { Collection } = await import('./api.js');
const drawn = [];
const view = (ns) => new Collection(`/apis/x/namespaces/${ns}/datavolumes`,
  (items) => drawn.push([ns, items.length]), () => {}).start();
const alice = view('alice');
await new Promise((r) => setTimeout(r, 10));
alice.stop();  // the user switched to the namespace "empty"
const empty = view('empty');
await new Promise((r) => setTimeout(r, 10));
pending[1].answer([]);
pending[0].answer(['alice-disk']);  // alice's list arrives late
await new Promise((r) => setTimeout(r, 50));
empty.stop();
console.log(JSON.stringify({ drawn, aborted: pending[0].signal ? pending[0].signal.aborted : null }));
""")
    assert isinstance(result, dict)
    assert result["aborted"] is True, "the old view's list request must be cancelled"
    assert result["drawn"] == [["empty", 0]], result


def test_a_refused_upload_shows_why_and_no_complete_bar(tmp_path: Path) -> None:
    result = run_js(tmp_path, """
globalThis.sessionStorage = { getItem: () => 't' };
const { failingMessages, barValue } = await import('./volumes.js');
const refused = { status: { phase: 'UploadReady', progress: '100.00%', conditions: [
  { type: 'Bound', status: 'True', reason: 'Bound', message: '' },
  { type: 'Ready', status: 'False', reason: '', message: '' },
  { type: 'Running', status: 'True', reason: 'ImageTooLarge',
    message: 'virtual size 2Gi is over the capacity 1Gi' }] } };
const running = { status: { phase: 'UploadReady', progress: '40%', conditions: [
  { type: 'Running', status: 'True', reason: 'Pod is running', message: '' }] } };
const done = { status: { phase: 'Succeeded', progress: '100.0%', conditions: [] } };
console.log(JSON.stringify({ refused: failingMessages(refused), running: failingMessages(running),
  bars: [barValue(refused), barValue(running), barValue(done)] }));
""")
    assert isinstance(result, dict)
    assert result["refused"] == ["Running (ImageTooLarge): virtual size 2Gi is over the capacity 1Gi"]
    assert result["running"] == []
    assert result["bars"] == [99, 40, 100]


def test_an_empty_file_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    result = run_js(tmp_path, """
globalThis.sessionStorage = { getItem: () => 't' };
const { fileProblem, sentShare } = await import('./upload.js');
console.log(JSON.stringify({ empty: fileProblem({ name: 'zero.img', size: 0 }), none: fileProblem(undefined),
  fine: fileProblem({ name: 'disk.img', size: 1 }), share: sentShare(1000, 1000) }));
""")
    assert isinstance(result, dict)
    assert result["empty"] == "The file is empty: zero.img has 0 bytes; choose a disk image."
    assert result["none"] and result["fine"] is None
    assert result["share"] < 1000, "all bytes sent is not a complete upload"
