// Upload: a chosen or dropped file becomes a DataVolume with source upload. The page creates the
// DataVolume, waits for its upload server (phase UploadReady), asks an UploadTokenRequest for a token
// and sends the file to the upload proxy's form-async endpoint, with a byte progress bar.
// A dropped connection continues: HEAD on the upload path says how many bytes the server holds
// (Upload-Offset, for an image of Upload-Length bytes) and a PUT with Content-Range sends the rest;
// when it holds nothing of this file the upload starts again. An expired token is replaced.
import { describe, formatBytes, formatDuration, request } from './api.js';
import { DV_API, failingMessages, manifest } from './volumes.js';

const TOKEN_API = '/apis/upload.cdi.kubevirt.io/v1beta1';
const FORM_ASYNC = '/v1beta1/upload-form-async';
const ASYNC = '/v1beta1/upload-async';
const RETRIES = 5;

class UploadFailed extends Error {}

// What is wrong with the chosen file, checked before anything is created (no DataVolume is left
// behind for a file that cannot be uploaded); null when it can be sent.
export function fileProblem(file) {
  if (!file) return 'Choose a file to upload first.';
  if (file.size === 0) return `The file is empty: ${file.name} has 0 bytes; choose a disk image.`;
  return null;
}

// The upload's own bar: complete only once the DataVolume Succeeded, never when the bytes are merely sent.
export function sentShare(sent, size) {
  return Math.min(sent, size * 0.99);
}

function roundUpMiB(bytes) { return `${Math.max(1, Math.ceil(bytes / 2 ** 20))}Mi`; }

async function newToken(namespace, pvc) {
  const req = await request('POST', `${TOKEN_API}/namespaces/${encodeURIComponent(namespace)}/uploadtokenrequests`, {
    apiVersion: 'upload.cdi.kubevirt.io/v1beta1', kind: 'UploadTokenRequest',
    metadata: { name: pvc, namespace }, spec: { pvcName: pvc } });
  if (!req.status || !req.status.token) throw new Error('the UploadTokenRequest returned no token');
  return req.status.token;
}

// One attempt: resolves {status, body, headers}; rejects with a TypeError-like error when the
// connection dropped.
function send(method, path, uploadToken, body, extraHeaders, onBytes) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    xhr.setRequestHeader('Authorization', `Bearer ${uploadToken}`);
    for (const [k, v] of Object.entries(extraHeaders)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (ev) => onBytes(ev.loaded);
    xhr.onload = () => resolve({ status: xhr.status, body: xhr.responseText,
                                 offset: Number(xhr.getResponseHeader('Upload-Offset') || 0) });
    xhr.onerror = () => reject(new Error('the connection dropped'));
    xhr.ontimeout = () => reject(new Error('the connection timed out'));
    xhr.onabort = () => reject(new Error('the upload was cancelled'));
    xhr.send(body);
  });
}

// How much of this file the upload server holds; while it restarts (the proxy answers 502/503) ask
// again for a while, so that a restarted server's resume point is found rather than starting over.
async function held(uploadToken, size) {
  for (let attempt = 0; ; attempt += 1) {
    const resp = await fetch(ASYNC, { method: 'HEAD', headers: { Authorization: `Bearer ${uploadToken}` },
                                     cache: 'no-store', credentials: 'omit' });
    if (resp.status === 401) return { expired: true, offset: 0 };
    if ((resp.status === 502 || resp.status === 503) && attempt < 40) {
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    if (resp.status !== 200 || resp.headers.get('Upload-Length') !== String(size)) return { offset: 0 };
    return { offset: Number(resp.headers.get('Upload-Offset') || 0) };
  }
}

export class Uploader {
  constructor({ namespace, file, onProgress, onStatus }) {
    this.namespace = namespace;
    this.file = file;
    this.onProgress = onProgress;
    this.onStatus = onStatus;
    this.resumes = 0;
    this.continuedAt = [];  // the byte each continuation started from (0: the server held nothing)
  }

  async run(name, token) {
    const file = this.file;
    let uploadToken = token;
    let offset = 0;
    let failures = 0;
    for (;;) {
      let result;
      try {
        if (offset === 0) {
          const form = new FormData();
          form.append('file', file, file.name);
          // the multipart overhead counts in loaded: the bar shows the file's share of it
          result = await send('POST', FORM_ASYNC, uploadToken, form, { 'Upload-Length': String(file.size) },
            (n) => this.onProgress(Math.min(n, file.size)));
        } else {
          this.onStatus(`Continuing at byte ${offset} of ${file.size}.`);
          this.continuedAt.push(offset);
          result = await send('PUT', ASYNC, uploadToken, file.slice(offset),
            { 'Content-Range': `bytes ${offset}-${file.size - 1}/${file.size}`, 'Content-Type': 'application/octet-stream' },
            (n) => this.onProgress(offset + n));
        }
      } catch (err) {
        failures += 1;
        if (failures > RETRIES) throw new UploadFailed(`The upload failed after ${RETRIES} retries: ${err.message}`);
        this.onStatus(`The connection dropped (${err.message}); asking the server how much it holds.`);
        await new Promise((r) => setTimeout(r, Math.min(500 * failures, 5000)));
        try {
          const h = await held(uploadToken, file.size);
          if (h.expired) uploadToken = await newToken(this.namespace, name);
          offset = h.expired ? 0 : h.offset;
          if (h.expired) offset = (await held(uploadToken, file.size)).offset;
        } catch (_) { offset = 0; }
        this.resumes += 1;
        if (offset === 0) this.continuedAt.push(0);
        continue;
      }
      if (result.status === 200) return;
      if (result.status === 401) { uploadToken = await newToken(this.namespace, name); continue; }
      if (result.status === 416) { offset = result.offset; continue; }
      if ((result.status === 502 || result.status === 503) && failures < RETRIES) {
        failures += 1;
        this.onStatus(`The upload server is not ready (${result.status}: ${result.body.trim()}); trying again.`);
        await new Promise((r) => setTimeout(r, Math.min(1000 * failures, 5000)));
        const h = await held(uploadToken, file.size).catch(() => ({ offset: 0 }));
        offset = h.offset;
        this.resumes += 1;
        if (offset === 0) this.continuedAt.push(0);
        continue;
      }
      throw new UploadFailed(`The upload was refused (${result.status}): ${result.body.trim() || 'no reason given'}`);
    }
  }
}

export function setupUploadForm(getNamespace, getVolumes) {
  const form = document.getElementById('upload-form');
  const input = document.getElementById('upload-file');
  const zone = document.getElementById('drop-zone');
  const bar = document.getElementById('upload-progress');
  const label = document.getElementById('upload-progress-label');
  const status = document.getElementById('upload-status');
  const error = document.getElementById('upload-error');
  const nameInput = document.getElementById('upload-name');
  const sizeInput = document.getElementById('upload-size');

  const chosen = () => {
    const file = input.files[0];
    if (!file) return;
    if (!nameInput.value) nameInput.value = file.name.toLowerCase().replace(/\.[^.]*$/, '').replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 50) || 'upload';
    if (!sizeInput.value) sizeInput.value = roundUpMiB(file.size);
  };
  input.addEventListener('change', chosen);
  zone.addEventListener('dragover', (ev) => { ev.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    zone.classList.remove('over');
    if (ev.dataTransfer.files.length) { input.files = ev.dataTransfer.files; chosen(); }
  });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = ''; status.textContent = ''; label.textContent = '';
    const file = input.files[0];
    const problem = fileProblem(file);
    if (problem) { error.textContent = problem; return; }
    const ns = getNamespace();
    const name = nameInput.value.trim();
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const dv = manifest(ns, { name, source: 'upload', size: sizeInput.value.trim(), mode: document.getElementById('upload-mode').value });
      await request('POST', `${DV_API}/namespaces/${encodeURIComponent(ns)}/datavolumes`, dv);
      status.textContent = `Created DataVolume ${ns}/${name}; waiting for its upload server.`;
      const ready = await getVolumes().collection.waitFor(name, (o) => ['UploadReady', 'Failed'].includes((o.status || {}).phase));
      if (ready.status.phase === 'Failed') throw new UploadFailed(`DataVolume ${name} failed before the upload started; see its conditions.`);
      const token = await newToken(ns, name);
      bar.hidden = false; bar.max = file.size || 1; bar.value = 0;
      const started = performance.now() / 1000;
      let firstBytes = null;
      const uploader = new Uploader({
        namespace: ns, file,
        onStatus: (text) => { status.textContent = text; },
        onProgress: (n) => {
          bar.value = sentShare(n, file.size);
          const now = performance.now() / 1000;
          if (firstBytes === null) firstBytes = { t: started, n: 0 };
          const rate = (n - firstBytes.n) / Math.max(now - firstBytes.t, 0.001);
          const eta = rate > 0 ? (file.size - n) / rate : NaN;
          label.textContent = `${formatBytes(n)} of ${formatBytes(file.size)} sent, ${formatBytes(rate)}/s, ETA ${formatDuration(eta)}`;
        },
      });
      status.textContent = `Uploading ${file.name} into ${ns}/${name}.`;
      await uploader.run(name, token);
      const continued = uploader.continuedAt.length
        ? ` (after ${uploader.resumes} drop(s), continued from byte ${uploader.continuedAt.join(', ')})` : '';
      status.textContent = `Upload of ${file.name} received${continued}; `
        + `the volume is being written: watch ${name} in DataVolumes.`;
      // the bytes arrived; the image may still be refused (too large, not an image): say so, or finish the bar
      const outcome = await getVolumes().collection.waitFor(name, (o) => ['Succeeded', 'Failed'].includes((o.status || {}).phase)
        || failingMessages(o).length > 0);
      if ((outcome.status || {}).phase === 'Succeeded') {
        bar.value = bar.max;
        status.textContent = `Upload of ${file.name} received${continued} and written into ${ns}/${name}.`;
      } else {
        throw new UploadFailed(`The upload into ${ns}/${name} was not accepted: ${failingMessages(outcome).join('; ') || 'see its conditions'}`);
      }
    } catch (err) {
      error.textContent = describe(err);
    } finally {
      button.disabled = false;
    }
  });
}
