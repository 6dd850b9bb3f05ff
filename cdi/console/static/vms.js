// VirtualMachines of a namespace, live: status, start/stop/restart (KubeVirt's subresources) and the
// serial console in the page (xterm.js, served from the package) over the console websocket.
import { Collection, describe, el, request, token } from './api.js';

const VM_API = '/apis/kubevirt.io/v1';
const SUB_API = '/apis/subresources.kubevirt.io/v1';
const TOKEN_PROTOCOL = 'base64url.bearer.authorization.k8s.io.';

function b64url(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export class VmsView {
  constructor(namespace) {
    this.namespace = namespace;
    this.rows = document.getElementById('vm-rows');
    this.error = document.getElementById('vms-error');
    this.vms = [];
    this.vmis = new Map();
    const ns = encodeURIComponent(namespace);
    const onError = (err) => { this.error.textContent = err ? describe(err) : ''; };
    this.vmCollection = new Collection(`${VM_API}/namespaces/${ns}/virtualmachines`,
      (items) => { this.vms = items; this.render(); }, onError).start();
    this.vmiCollection = new Collection(`${VM_API}/namespaces/${ns}/virtualmachineinstances`,
      (items) => { this.vmis = new Map(items.map((i) => [i.metadata.name, i])); this.render(); }, () => {}).start();
    this.console = new SerialConsole();
  }

  stop() { this.vmCollection.stop(); this.vmiCollection.stop(); this.console.close(); this.rows.replaceChildren(); }

  async act(name, action) {
    this.error.textContent = '';
    try {
      await request('PUT', `${SUB_API}/namespaces/${encodeURIComponent(this.namespace)}/virtualmachines/${encodeURIComponent(name)}/${action}`);
    } catch (err) {
      this.error.textContent = describe(err);
    }
  }

  render() {
    const vms = [...this.vms].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    this.rows.replaceChildren(...vms.map((vm) => {
      const name = vm.metadata.name;
      const status = (vm.status || {}).printableStatus || 'Stopped';
      const vmi = this.vmis.get(name);
      const phase = vmi ? ((vmi.status || {}).phase || 'Pending') : 'none';
      const button = (action, label) => el('button', { type: 'button', class: 'secondary', 'data-action': action,
        'aria-label': `${label} ${name}`, text: label, onclick: () => this.act(name, action) });
      const consoleButton = el('button', { type: 'button', 'data-action': 'console', 'aria-label': `Serial console of ${name}`,
        text: 'Console', disabled: phase !== 'Running', onclick: () => this.console.open(this.namespace, name) });
      return el('tr', { 'data-vm': name },
        el('th', { scope: 'row', text: name }),
        el('td', { class: 'status', text: status }),
        el('td', { class: 'vmi-phase', text: phase }),
        el('td', {}, el('div', { class: 'actions' }, button('start', 'Start'), button('stop', 'Stop'),
          button('restart', 'Restart'), consoleButton)));
    }));
    if (!vms.length) this.rows.append(el('tr', {}, el('td', { colspan: 4, text: 'No VirtualMachines in this namespace.' })));
  }
}

class SerialConsole {
  constructor() {
    this.box = document.getElementById('console-box');
    this.status = document.getElementById('console-status');
    this.target = document.getElementById('terminal');
    document.getElementById('console-close').addEventListener('click', () => this.close());
    this.ws = null;
    this.term = null;
  }

  async open(namespace, name) {
    this.close();
    this.box.hidden = false;
    let Terminal;
    try {
      ({ Terminal } = await import('./vendor/@xterm/xterm/lib/xterm.mjs'));
    } catch (err) {
      this.status.textContent = `The terminal (xterm.js) is missing from the package: run scripts/setup.sh (${err.message}).`;
      return;
    }
    if (!document.getElementById('xterm-css')) {
      document.head.append(el('link', { id: 'xterm-css', rel: 'stylesheet', href: 'vendor/@xterm/xterm/css/xterm.css' }));
    }
    this.term = new Terminal({ convertEol: false, cursorBlink: true, rows: 24, cols: 100, screenReaderMode: true });
    this.term.open(this.target);
    document.getElementById('console-heading').textContent = `Serial console of ${namespace}/${name}`;
    this.status.textContent = `Connecting to ${name}...`;
    const url = `wss://${location.host}${SUB_API}/namespaces/${encodeURIComponent(namespace)}/virtualmachineinstances/${encodeURIComponent(name)}/console`;
    const ws = new WebSocket(url, ['plain.kubevirt.io', TOKEN_PROTOCOL + b64url(token())]);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    const encoder = new TextEncoder();
    ws.onopen = () => { this.status.textContent = `Connected to ${name}.`; this.term.focus(); };
    ws.onmessage = (ev) => {
      this.term.write(typeof ev.data === 'string' ? ev.data : new Uint8Array(ev.data));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.status.textContent = ev.code >= 4000
        ? `The console was refused (${ev.code - 4000}): ${ev.reason}`
        : `The console of ${name} closed${ev.reason ? `: ${ev.reason}` : ''}.`;
    };
    this.term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  }

  close() {
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    if (this.term) { this.term.dispose(); this.term = null; }
    this.box.hidden = true;
    this.status.textContent = '';
  }
}
