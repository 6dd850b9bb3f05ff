// Events of the namespace, newest first, live.
import { Collection, describe, el } from './api.js';

const LIMIT = 200;

function when(ev) {
  return ev.lastTimestamp || ev.eventTime || (ev.series || {}).lastObservedTime || ev.firstTimestamp
    || ev.metadata.creationTimestamp || '';
}

export class EventsView {
  constructor(namespace) {
    this.rows = document.getElementById('event-rows');
    this.error = document.getElementById('events-error');
    this.collection = new Collection(`/api/v1/namespaces/${encodeURIComponent(namespace)}/events`,
      (items) => this.render(items), (err) => { this.error.textContent = err ? describe(err) : ''; }).start();
  }

  stop() { this.collection.stop(); this.rows.replaceChildren(); }

  render(items) {
    const sorted = [...items].sort((a, b) => (when(b) > when(a) ? 1 : when(b) < when(a) ? -1 : 0)).slice(0, LIMIT);
    this.rows.replaceChildren(...sorted.map((ev) => {
      const obj = ev.involvedObject || ev.regarding || {};
      const t = when(ev);
      return el('tr', { class: ev.type === 'Warning' ? 'failing' : '' },
        el('td', {}, el('time', { datetime: t, text: t ? new Date(t).toLocaleTimeString() : '' })),
        el('td', { text: ev.type || '' }),
        el('td', { class: 'reason', text: ev.reason || '' }),
        el('td', { text: `${(obj.kind || '').toLowerCase()}/${obj.name || ''}` }),
        el('td', { class: 'message', text: ev.message || ev.note || '' }));
    }));
    if (!sorted.length) this.rows.append(el('tr', {}, el('td', { colspan: 5, text: 'No events in this namespace.' })));
  }
}
