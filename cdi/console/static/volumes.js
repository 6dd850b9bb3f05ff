// DataVolumes of a namespace, live: phase, progress with rate and ETA, restarts, failures, digest.
// And the form creating one: import from a URL or a registry, a blank disk, a clone.
import { Collection, describe, el, formatBytes, formatDuration, parseQuantity, request } from './api.js';

export const DV_API = '/apis/cdi.kubevirt.io/v1beta1';
const DIGEST = 'cdi.kubevirt.io/storage.import.volumeDigest';
// reasons of a condition that say all is well or not started yet, not that something failed
const BENIGN = new Set(['', 'Completed', 'Pending', 'Bound', 'PodRunning', 'Running']);

function claimSpec(dv) {
  return (dv.spec && (dv.spec.storage || dv.spec.pvc)) || {};
}

function sizeOf(dv) {
  const req = (claimSpec(dv).resources || {}).requests || {};
  return parseQuantity(req.storage);
}

function percent(dv) {
  const p = parseFloat(String((dv.status || {}).progress || '').replace('%', ''));
  return Number.isFinite(p) ? p : null;
}

// How full a DataVolume's bar is drawn: complete only once it Succeeded (all bytes received is not a
// written, accepted volume; an upload may still be refused).
export function barValue(dv) {
  const p = percent(dv);
  if (p === null) return null;
  return (dv.status || {}).phase === 'Succeeded' ? Math.min(p, 100) : Math.min(p, 99);
}

// the reason of a Running condition that is True as it should be
const RUNNING_NORMALLY = new Set(['', 'Pod is running', 'PodRunning', 'Running']);

// Conditions that say something went wrong: False with a reason that is not a plain "not yet"; when
// the DataVolume failed, every False condition's message (Running carries the cause); and Running True
// with a message and another reason (an upload refused, say ImageTooLarge, while its server stays ready).
export function failingMessages(dv) {
  const status = dv.status || {};
  const failed = status.phase === 'Failed';
  const seen = new Set();
  const refusedWhileRunning = (c) => c.type === 'Running' && c.status === 'True' && !RUNNING_NORMALLY.has(c.reason || '');
  return (status.conditions || [])
    .filter((c) => c.message && (refusedWhileRunning(c) || (c.status === 'False'
      && (failed ? c.type !== 'Ready' || !BENIGN.has(c.reason || '') : !BENIGN.has(c.reason || '') && c.type !== 'Ready'))))
    .map((c) => `${c.type}${c.reason && c.reason !== c.type ? ` (${c.reason})` : ''}: ${c.message}`)
    .filter((m) => !seen.has(m) && seen.add(m));
}

// Rate and ETA from how the progress moved over the last samples (the DataVolume carries a percentage;
// bytes are that share of the requested size, so the rate is an estimate).
class Rates {
  constructor() { this.samples = new Map(); }

  update(dv) {
    const name = dv.metadata.name;
    const p = percent(dv);
    const list = this.samples.get(name) || [];
    if (p === null || (list.length && p < list[list.length - 1].p)) { this.samples.set(name, []); return null; }
    if (!list.length || list[list.length - 1].p !== p) list.push({ t: performance.now() / 1000, p });
    while (list.length > 10) list.shift();
    this.samples.set(name, list);
    if (list.length < 2 || p >= 100) return null;
    const first = list[0]; const last = list[list.length - 1];
    const perSecond = (last.p - first.p) / Math.max(last.t - first.t, 0.001);
    if (perSecond <= 0) return null;
    const size = sizeOf(dv);
    return { bytesPerSecond: Number.isFinite(size) ? size * perSecond / 100 : NaN, eta: (100 - p) / perSecond };
  }
}

export class VolumesView {
  constructor(namespace) {
    this.namespace = namespace;
    this.rates = new Rates();
    this.rows = document.getElementById('dv-rows');
    this.error = document.getElementById('volumes-error');
    this.collection = new Collection(`${DV_API}/namespaces/${encodeURIComponent(namespace)}/datavolumes`,
      (items) => this.render(items), (err) => { this.error.textContent = err ? describe(err) : ''; }).start();
  }

  stop() { this.collection.stop(); this.rows.replaceChildren(); }

  render(items) {
    items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    this.rows.replaceChildren(...items.map((dv) => this.row(dv)));
    if (!items.length) this.rows.append(el('tr', {}, el('td', { colspan: 6, text: 'No DataVolumes in this namespace.' })));
  }

  row(dv) {
    const name = dv.metadata.name;
    const status = dv.status || {};
    const p = percent(dv);
    const rate = this.rates.update(dv);
    const progressCell = el('td', { class: 'progress' });
    if (p !== null) {
      progressCell.append(el('progress', { max: 100, value: barValue(dv), 'aria-label': `Progress of ${name}` }), ` ${p.toFixed(2)}%`);
      if (rate) {
        const speed = Number.isFinite(rate.bytesPerSecond) ? `≈ ${formatBytes(rate.bytesPerSecond)}/s, ` : '';
        progressCell.append(el('div', { class: 'help rate', text: `${speed}ETA ${formatDuration(rate.eta)}` }));
      }
    } else {
      progressCell.textContent = status.progress || '';
    }
    const details = el('td', { class: 'details' });
    const digest = ((dv.metadata.annotations || {})[DIGEST]) || '';
    if (status.phase === 'Succeeded' && digest) details.append('Digest ', el('code', { class: 'digest', text: digest }));
    for (const m of failingMessages(dv)) details.append(el('div', { class: 'failing', text: m }));
    const del = el('button', { type: 'button', class: 'secondary', 'aria-label': `Delete DataVolume ${name}`,
      text: 'Delete',
      onclick: async () => {
        if (!window.confirm(`Delete DataVolume ${name} and its volume?`)) return;
        try { await request('DELETE', `${DV_API}/namespaces/${encodeURIComponent(this.namespace)}/datavolumes/${encodeURIComponent(name)}`); } catch (err) { this.error.textContent = describe(err); }
      } });
    return el('tr', { 'data-dv': name },
      el('th', { scope: 'row', text: name }),
      el('td', { class: 'phase', text: status.phase || 'Pending' }),
      progressCell,
      el('td', { class: 'restarts', text: String(status.restartCount || 0) }),
      details,
      el('td', {}, del));
  }
}

export function manifest(namespace, { name, source, url, checksum, cloneNamespace, cloneName, size, mode }) {
  let src;
  if (source === 'http') {
    if (!/^https?:\/\//.test(url)) throw new Error('The URL must start with http:// or https://');
    src = { http: { url } };
    if (checksum) src.http.checksum = checksum;
  } else if (source === 'registry') {
    if (!/^(docker|oci-archive):\/\//.test(url)) throw new Error('A registry URL starts with docker:// (docker://quay.io/org/image:tag)');
    src = { registry: { url } };
  } else if (source === 'blank') {
    src = { blank: {} };
  } else if (source === 'pvc') {
    if (!cloneName) throw new Error('Name the volume (PVC) to clone');
    src = { pvc: { namespace: cloneNamespace || namespace, name: cloneName } };
  } else if (source === 'upload') {
    src = { upload: {} };
  }
  const storage = { volumeMode: mode };
  if (size) {
    if (!Number.isFinite(parseQuantity(size))) throw new Error(`The size ${size} is not a quantity (10Gi, 500Mi)`);
    storage.resources = { requests: { storage: size } };
  } else if (source !== 'pvc') {
    throw new Error('Give a size (10Gi, 500Mi)');
  }
  return { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataVolume', metadata: { name, namespace },
           spec: { source: src, storage } };
}

export function setupCreateForm(getNamespace) {
  const form = document.getElementById('create-form');
  const source = document.getElementById('create-source');
  const status = document.getElementById('create-status');
  const error = document.getElementById('create-error');
  const showFields = () => {
    for (const node of form.querySelectorAll('[data-for]')) node.hidden = !node.dataset.for.split(' ').includes(source.value);
    document.getElementById('create-url').placeholder = source.value === 'registry'
      ? 'docker://registry.example.org/disk:latest' : 'https://example.org/disk.qcow2';
  };
  source.addEventListener('change', showFields);
  showFields();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.textContent = ''; error.textContent = '';
    const data = Object.fromEntries(new FormData(form).entries());
    for (const k of Object.keys(data)) data[k] = String(data[k]).trim();
    const ns = getNamespace();
    try {
      const dv = manifest(ns, data);
      await request('POST', `${DV_API}/namespaces/${encodeURIComponent(ns)}/datavolumes`, dv);
      status.textContent = `Created DataVolume ${ns}/${data.name}.`;
    } catch (err) {
      error.textContent = describe(err);
    }
  });
}
