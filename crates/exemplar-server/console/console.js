// The Exemplar console: search a photo, browse and edit the catalogue, turn unknown
// photos into classes. Plain DOM code talking to the service's HTTP API; user data is
// only ever set as text, never as HTML.
'use strict';

const KEY_STORE = 'exemplar-api-key';
const SVG = 'http://www.w3.org/2000/svg';
const state = { key: sessionStorage.getItem(KEY_STORE), blobs: [], keyAsked: null };

// ---- DOM helpers ----------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  return el;
}

let fieldIds = 0;
/** A labelled input: returns [label, input]. */
function field(text, attrs = {}) {
  const id = attrs.id || `f${++fieldIds}`;
  return [h('label', { for: id }, text), h('input', { ...attrs, id })];
}

function showError(error) {
  const box = document.getElementById('error');
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
  box.scrollIntoView({ block: 'nearest' });
}

function clearError() {
  const box = document.getElementById('error');
  box.hidden = true;
  box.textContent = '';
}

/** Runs an action from a button, showing its error and keeping the button busy meanwhile. */
async function act(button, action) {
  clearError();
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (e) {
    showError(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- the API ----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

/** Calls the API; on 401 asks for the key once and tries again. JSON in and out unless
 *  `body` is FormData or `raw` is set. */
async function api(method, path, body, { raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body: payload });
    } catch (e) {
      throw new ApiError(0, 'network', `The server did not answer (${e.message}).`);
    }
    if (response.status === 401 && attempt === 0 && (await askKey())) continue;
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      let kind;
      try {
        const problem = await response.json();
        if (problem.error) message = problem.error;
        kind = problem.kind;
      } catch (_) { /* not JSON: keep the status line */ }
      throw new ApiError(response.status, kind, message);
    }
    if (raw) return response;
    if (response.status === 204) return null;
    return response.json();
  }
}

/** Shows an image the API serves (with the key, when one is set) in `img`. */
async function loadImage(img, path) {
  try {
    const blob = await (await api('GET', path, undefined, { raw: true })).blob();
    const url = URL.createObjectURL(blob);
    state.blobs.push(url);
    img.src = url;
  } catch (e) {
    img.alt = `${img.alt} (${e.message})`;
  }
}

/** Asks for the API key (one dialog at a time); true when one was given. */
function askKey() {
  if (state.keyAsked) return state.keyAsked;
  const dialog = document.getElementById('key-dialog');
  const input = document.getElementById('key-input');
  input.value = state.key || '';
  state.keyAsked = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      state.keyAsked = null;
      if (dialog.returnValue === 'save' && input.value) {
        state.key = input.value;
        sessionStorage.setItem(KEY_STORE, state.key);
        resolve(true);
      } else {
        if (dialog.returnValue === 'forget') {
          state.key = null;
          sessionStorage.removeItem(KEY_STORE);
        }
        resolve(false);
      }
    }, { once: true });
  });
  dialog.returnValue = '';
  dialog.showModal();
  input.focus();
  return state.keyAsked;
}

// ---- shared pieces ------------------------------------------------------------------

/** Metadata editor: rows of key and value. `read()` gives the object. */
function metadataEditor(initial = {}) {
  const rows = h('div');
  const addRow = (key = '', value = '') => {
    const n = rows.children.length + 1;
    const row = h('div', { class: 'kv' },
      h('input', { 'aria-label': `Metadata key ${n}`, placeholder: 'key (e.g. artist)', value: key }),
      h('input', { 'aria-label': `Metadata value ${n}`, placeholder: 'value', value }),
      h('button', { type: 'button', class: 'quiet', 'aria-label': `Remove metadata ${n}`, onclick: () => row.remove() }, '✕'));
    rows.append(row);
  };
  for (const [k, v] of Object.entries(initial)) addRow(k, v);
  if (!rows.children.length) addRow();
  const element = h('fieldset', { class: 'card' }, h('legend', {}, 'Metadata'), rows,
    h('button', { type: 'button', onclick: () => addRow() }, 'Add a key'));
  const read = () => {
    const out = {};
    for (const row of rows.children) {
      const [k, v] = row.querySelectorAll('input');
      if (k.value.trim()) out[k.value.trim()] = v.value;
    }
    return out;
  };
  return { element, read };
}

/** Sends photos one request each, so progress can be shown; returns the failures. */
async function uploadEach(files, path, progress, status) {
  const failed = [];
  progress.max = files.length;
  progress.value = 0;
  for (const file of files) {
    const form = new FormData();
    form.append('image', file, file.name);
    try {
      await api('POST', path, form);
    } catch (e) {
      failed.push(`${file.name}: ${e.message}`);
    }
    progress.value += 1;
    status.textContent = `${progress.value} of ${files.length} sent`;
  }
  return failed;
}

function tags(metadata) {
  return h('div', { class: 'tags' },
    Object.entries(metadata || {}).map(([k, v]) => h('span', { class: 'tag' }, `${k}: ${v}`)));
}

const pct = (x) => `${Math.round(x * 100)} %`;
const ms = (x) => `${Math.round(x)} ms`;

// ---- search ----------------------------------------------------------------------

function searchView(main) {
  let file = null;
  let crop = null;
  let natural = { w: 1, h: 1 };
  let drawing = false;
  const [photoLabel, input] = field('Take or choose a photo', { type: 'file', accept: 'image/*', capture: 'environment', id: 'search-photo' });
  const drop = h('div', { class: 'drop' }, photoLabel, input,
    h('p', { class: 'muted small' }, 'or drop a photo here'));
  const img = h('img', { alt: 'The photo searched', id: 'search-image' });
  const overlay = svg('svg', { id: 'overlay', 'aria-hidden': 'true', preserveAspectRatio: 'none' });
  const stage = h('div', { class: 'stage' }, img, overlay);
  const partButton = h('button', { type: 'button', id: 'draw-part' }, 'Draw the part to search');
  const againButton = h('button', { type: 'button', class: 'primary', id: 'search-again' }, 'Search');
  const tools = h('div', { class: 'row' }, partButton, againButton);
  const left = h('div', { hidden: true }, stage, tools);
  const result = h('section', { 'aria-live': 'polite', id: 'result' });
  main.append(h('h1', {}, 'Search'), drop, h('div', { class: 'search-grid' }, left, result));

  const pick = (chosen) => {
    if (!chosen) return;
    file = chosen;
    crop = null;
    const url = URL.createObjectURL(file);
    state.blobs.push(url);
    // The search starts at once; the photo is shown (and the outline can be drawn on
    // it) once the browser has decoded it.
    img.onload = () => {
      natural = { w: img.naturalWidth, h: img.naturalHeight };
      overlay.setAttribute('viewBox', `0 0 ${natural.w} ${natural.h}`);
      left.hidden = false;
    };
    img.src = url;
    search();
  };
  input.addEventListener('change', () => pick(input.files[0]));
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    pick(e.dataTransfer.files[0]);
  });

  // The part to search: drawn with a pointer while "draw" is on (so a phone can still
  // scroll over the photo otherwise).
  const toPhoto = (e) => {
    const box = overlay.getBoundingClientRect();
    const x = Math.min(Math.max(e.clientX - box.left, 0), box.width);
    const y = Math.min(Math.max(e.clientY - box.top, 0), box.height);
    return [x / box.width * natural.w, y / box.height * natural.h];
  };
  let start = null;
  const drawCrop = () => {
    overlay.querySelector('.crop')?.remove();
    if (crop) overlay.append(svg('rect', { class: 'crop', x: crop.x, y: crop.y, width: crop.w, height: crop.h }));
  };
  partButton.addEventListener('click', () => {
    drawing = !drawing;
    stage.style.touchAction = drawing ? 'none' : '';
    partButton.textContent = drawing ? 'Drawing: drag over the photo' : 'Draw the part to search';
    if (!drawing && crop) { crop = null; drawCrop(); }
  });
  overlay.addEventListener('pointerdown', (e) => {
    if (!drawing) return;
    overlay.setPointerCapture(e.pointerId);
    start = toPhoto(e);
  });
  overlay.addEventListener('pointermove', (e) => {
    if (!drawing || !start) return;
    const [x, y] = toPhoto(e);
    crop = { x: Math.min(x, start[0]), y: Math.min(y, start[1]), w: Math.abs(x - start[0]), h: Math.abs(y - start[1]) };
    drawCrop();
  });
  overlay.addEventListener('pointerup', () => {
    if (!drawing || !start) return;
    start = null;
    if (!crop || crop.w < 16 || crop.h < 16) { crop = null; drawCrop(); return; }
    drawing = false;
    stage.style.touchAction = '';
    partButton.textContent = 'Search the whole photo';
    search();
  });
  againButton.addEventListener('click', () => search());

  async function search() {
    if (!file) return;
    overlay.querySelector('.outline')?.remove();
    result.replaceChildren(h('p', { class: 'muted' }, 'Searching…'));
    const form = new FormData();
    form.append('image', file, file.name || 'photo.jpg');
    const part = crop && [crop.x, crop.y, crop.w, crop.h].map(Math.round);
    if (part) form.append('crop', part.join(','));
    const started = performance.now();
    performance.mark('exemplar-search');
    const answer = await act(againButton, () => api('POST', '/search', form));
    if (!answer) { result.replaceChildren(); return; }
    showAnswer(answer, performance.now() - started, part);
    // From the photo chosen to its answer on screen (devtools and tests read it).
    requestAnimationFrame(() => performance.measure('exemplar-search-to-result', 'exemplar-search'));
  }

  function showAnswer(answer, roundTrip, part) {
    const v = answer.verdict;
    const parts = [];
    if (part) {
      parts.push(h('p', { class: 'small muted', id: 'searched-part' },
        `Searched the part at ${part[0]}, ${part[1]}, ${part[2]} × ${part[3]} px`));
    }
    if (v.status === 'match') {
      const e = v.evidence;
      parts.push(h('div', { class: 'verdict match', id: 'verdict' }, `Match: ${v.label}`));
      parts.push(h('p', { class: 'small' },
        e ? `${e.inliers} inliers of ${e.matches} matches · covers ${pct(e.coverage)} of the cover · ` : '',
        `score ${v.score.toFixed(3)}`, ' · ', h('a', { href: `#/class/${v.class_id}` }, 'open the class')));
      if (e && e.quadrilateral) {
        overlay.append(svg('polygon', { class: 'outline', id: 'outline', points: e.quadrilateral.map((p) => p.join(',')).join(' ') }));
      }
    } else {
      parts.push(h('div', { class: 'verdict unknown', id: 'verdict' }, 'Unknown: not recognised'));
      parts.push(h('p', { class: 'small' }, v.best_inliers !== undefined
        ? `The best candidate reached ${v.best_inliers} inliers, too few to name it.`
        : 'No candidate was close enough to name.'));
      parts.push(newClassFromPhoto(answer.unknown_id));
    }
    const thumbs = new Map();
    for (const n of answer.neighbours) if (!thumbs.has(n.class_id)) thumbs.set(n.class_id, n.exemplar_id);
    parts.push(h('h2', {}, 'Closest classes'));
    parts.push(h('ul', { class: 'hits' }, answer.classes.slice(0, 5).map((c) => {
      const thumb = h('img', { class: 'thumb', alt: `Photo of ${c.label}`, width: 64, height: 64 });
      loadImage(thumb, `/exemplars/${thumbs.get(c.class_id)}/thumbnail`);
      return h('li', {}, thumb, h('div', {},
        h('a', { href: `#/class/${c.class_id}` }, c.label),
        h('div', { class: 'small muted' },
          `score ${c.score.toFixed(3)}`, c.evidence ? ` · ${c.evidence.inliers} inliers` : '')));
    })));
    const t = answer.timings;
    parts.push(h('h2', {}, 'Timings'));
    parts.push(h('table', { class: 'timings' }, h('tbody', {},
      [['Photo and model', t.embed_ms], ['Shortlist', t.shortlist_ms], ['Verification', t.verify_ms], ['Round trip', roundTrip]]
        .map(([name, value]) => h('tr', {}, h('td', {}, name), h('td', {}, ms(value)))))));
    result.replaceChildren(...parts);
  }

  /** "Make a class of it": from the inbox copy when there is one, else from the photo. */
  function newClassFromPhoto(unknownId) {
    const [label, name] = field('Label', { id: 'new-label', required: true, maxlength: 200 });
    const button = h('button', { class: 'primary' }, 'Make a new class of this photo');
    const form = h('form', { class: 'card', id: 'new-from-photo' },
      h('h2', {}, 'Not in the catalogue yet?'), label, name, h('div', { class: 'row' }, button));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      act(button, async () => {
        let made;
        if (unknownId !== undefined) {
          made = await api('POST', `/unknowns/${unknownId}/promote`, { label: name.value });
        } else {
          const body = new FormData();
          body.append('label', name.value);
          body.append('image', file, file.name || 'photo.jpg');
          made = await api('POST', '/classes', body);
        }
        form.replaceChildren(h('p', {}, 'Added ', h('a', { href: `#/class/${made.id}` }, made.label),
          '. Search again to check it is recognised.'));
      });
    });
    return form;
  }
}

// ---- catalogue -------------------------------------------------------------------------

function catalogueView(main) {
  const [qLabel, q] = field('Label contains', { id: 'filter-q', type: 'search' });
  const [fLabel, filter] = field('Metadata key=value', { id: 'filter-meta', placeholder: 'format=CD' });
  const find = h('button', { class: 'primary' }, 'Find');
  const form = h('form', { class: 'card', role: 'search' }, qLabel, q, fLabel, filter, h('div', { class: 'row' }, find));
  const grid = h('div', { class: 'grid', id: 'classes' });
  const more = h('button', { type: 'button', hidden: true }, 'More');
  const count = h('p', { class: 'muted small' });
  main.append(h('h1', {}, 'Catalogue'), form, count, grid, h('div', { class: 'row' }, more));
  let after = 0;
  const load = async (fresh) => {
    if (fresh) { after = 0; grid.replaceChildren(); }
    const params = new URLSearchParams({ limit: 24, after });
    if (q.value.trim()) params.set('q', q.value.trim());
    if (filter.value.trim()) params.set('filter', filter.value.trim());
    const page = await api('GET', `/classes?${params}`);
    for (const c of page.classes) {
      const thumb = h('img', { alt: `Photo of ${c.label}` });
      grid.append(h('div', { class: 'tile' }, thumb,
        h('a', { href: `#/class/${c.id}` }, c.label),
        h('span', { class: 'small muted' }, `${c.exemplar_count} photo${c.exemplar_count === 1 ? '' : 's'}`),
        tags(c.metadata)));
      if (c.photo_exemplar_id !== null) loadImage(thumb, `/exemplars/${c.photo_exemplar_id}/thumbnail`);
    }
    after = page.next_after || 0;
    more.hidden = !page.next_after;
    count.textContent = grid.children.length ? `${grid.children.length} shown` : 'No class matches.';
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); act(find, () => load(true)); });
  more.addEventListener('click', () => act(more, () => load(false)));
  act(null, () => load(true));
}

function classView(main, id) {
  main.append(h('p', { class: 'muted' }, 'Loading…'));
  act(null, async () => {
    const detail = await api('GET', `/classes/${id}`);
    const [lLabel, label] = field('Label', { id: 'class-label', value: detail.label, required: true, maxlength: 200 });
    const metadata = metadataEditor(detail.metadata);
    const save = h('button', { class: 'primary' }, 'Save');
    const saved = h('span', { class: 'muted small', 'aria-live': 'polite' });
    const edit = h('form', { class: 'card' }, lLabel, label, metadata.element, h('div', { class: 'row' }, save, saved));
    edit.addEventListener('submit', (e) => {
      e.preventDefault();
      act(save, async () => {
        await api('PATCH', `/classes/${id}`, { label: label.value, metadata: metadata.read() });
        saved.textContent = 'Saved.';
      });
    });
    const photos = h('div', { class: 'grid', id: 'exemplars' }, detail.exemplars.map((x) => {
      const img = h('img', { alt: x.name || `Exemplar ${x.id}` });
      if (x.photo_kept) loadImage(img, `/exemplars/${x.id}/thumbnail`);
      const remove = h('button', { type: 'button', class: 'danger' }, 'Delete');
      const tile = h('div', { class: 'tile' }, img, h('span', { class: 'small' }, x.name || `#${x.id}`), remove);
      remove.addEventListener('click', () => {
        if (!confirm(`Delete this photo (${x.name || '#' + x.id}) from “${detail.label}”?`)) return;
        act(remove, async () => { await api('DELETE', `/exemplars/${x.id}`); tile.remove(); });
      });
      return tile;
    }));
    const [aLabel, files] = field('Add photos', { type: 'file', accept: 'image/*', multiple: true, id: 'add-photos' });
    const add = h('button', { class: 'primary' }, 'Add');
    const progress = h('progress', { value: 0, max: 1, hidden: true });
    const status = h('p', { class: 'small muted', 'aria-live': 'polite' });
    const adder = h('form', { class: 'card' }, aLabel, files, h('div', { class: 'row' }, add), progress, status);
    adder.addEventListener('submit', (e) => {
      e.preventDefault();
      act(add, async () => {
        progress.hidden = false;
        const failed = await uploadEach([...files.files], `/classes/${id}/exemplars`, progress, status);
        if (failed.length) throw new Error(`Not added: ${failed.join('; ')}`);
        route();
      });
    });
    const del = h('button', { type: 'button', class: 'danger', id: 'delete-class' }, 'Delete this class');
    del.addEventListener('click', () => {
      if (!confirm(`Delete “${detail.label}” and its ${detail.exemplars.length} photos?`)) return;
      act(del, async () => { await api('DELETE', `/classes/${id}`); location.hash = '#/catalogue'; });
    });
    main.replaceChildren(h('h1', {}, detail.label), edit,
      h('h2', {}, `Photos (${detail.exemplars.length})`), photos, adder, h('div', { class: 'row' }, del));
  });
}

function newClassView(main) {
  const [lLabel, label] = field('Label', { id: 'class-label', required: true, maxlength: 200 });
  const metadata = metadataEditor();
  const [pLabel, files] = field('Photos', { type: 'file', accept: 'image/*', multiple: true, required: true, id: 'class-photos' });
  const create = h('button', { class: 'primary' }, 'Create the class');
  const progress = h('progress', { value: 0, max: 1, hidden: true });
  const status = h('p', { class: 'small muted', 'aria-live': 'polite' });
  const form = h('form', { class: 'card' }, lLabel, label, metadata.element, pLabel, files,
    h('div', { class: 'row' }, create), progress, status);
  main.append(h('h1', {}, 'New class'), form);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(create, async () => {
      const [first, ...rest] = [...files.files];
      const body = new FormData();
      body.append('label', label.value);
      body.append('metadata', JSON.stringify(metadata.read()));
      body.append('image', first, first.name);
      progress.hidden = false;
      progress.max = rest.length + 1;
      const made = await api('POST', '/classes', body);
      progress.value = 1;
      const failed = await uploadEach(rest, `/classes/${made.id}/exemplars`, progress, status);
      location.hash = `#/class/${made.id}`;
      if (failed.length) showError(`Created, but not added: ${failed.join('; ')}`);
    });
  });
}

// ---- unknowns inbox -------------------------------------------------------------------

function unknownsView(main) {
  const list = h('div', { class: 'grid', id: 'unknowns' });
  const note = h('p', { class: 'muted small' });
  main.append(h('h1', {}, 'Unknown photos'), note, list);
  act(null, async () => {
    const page = await api('GET', '/unknowns?limit=60');
    note.textContent = page.keeping
      ? `Photos of searches answered “unknown”: the last ${page.max_count} (${page.max_mib} MiB at most), for ${page.max_hours} hours at most.`
      : 'The inbox is off: start the server with --keep-unknown N to keep the photos of unknown searches here.';
    if (!page.unknowns.length) list.append(h('p', { class: 'muted' }, 'Nothing waiting.'));
    for (const u of page.unknowns) list.append(unknownCard(u));
  });
}

function unknownCard(u) {
  const img = h('img', { alt: `Unknown photo ${u.name || '#' + u.id}` });
  loadImage(img, `/unknowns/${u.id}/photo`);
  const card = h('div', { class: 'tile', 'data-unknown': u.id });
  const done = (message, classInfo) => card.replaceChildren(h('p', {}, message,
    classInfo ? h('a', { href: `#/class/${classInfo.id}` }, classInfo.label) : ''));

  const [nLabel, name] = field('New class label', { required: true, maxlength: 200 });
  const create = h('button', { class: 'primary' }, 'New class');
  const newForm = h('form', {}, nLabel, name, h('div', { class: 'row' }, create));
  newForm.addEventListener('submit', (e) => {
    e.preventDefault();
    act(create, async () => {
      const made = await api('POST', `/unknowns/${u.id}/promote`, { label: name.value });
      done('New class ', made);
    });
  });

  const options = h('datalist', { id: `classes-for-${u.id}` });
  const [cLabel, target] = field('Add to class', { list: options.id, placeholder: 'type a label', autocomplete: 'off' });
  target.addEventListener('input', async () => {
    const params = new URLSearchParams({ q: target.value, limit: 20 });
    try {
      const page = await api('GET', `/classes?${params}`);
      options.replaceChildren(...page.classes.map((c) => h('option', { value: `${c.label} (#${c.id})` })));
    } catch (_) { /* keep the old suggestions */ }
  });
  const addTo = h('button', {}, 'Add');
  const addForm = h('form', {}, cLabel, target, options, h('div', { class: 'row' }, addTo));
  const promoteTo = (classId, button) => act(button, async () => {
    const made = await api('POST', `/unknowns/${u.id}/promote`, { class_id: classId });
    done('Added to ', made);
  });
  addForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const id = /#(\d+)\)$/.exec(target.value);
    if (!id) { showError('Pick a class from the suggestions (type part of its label).'); return; }
    promoteTo(Number(id[1]), addTo);
  });
  const hint = u.nearest_class_id !== null && u.nearest_class_id !== undefined
    ? h('button', { type: 'button' }, `Add to “${u.nearest_label}”`)
    : null;
  hint?.addEventListener('click', () => promoteTo(u.nearest_class_id, hint));

  const dismiss = h('button', { type: 'button', class: 'danger' }, 'Dismiss');
  dismiss.addEventListener('click', () => act(dismiss, async () => {
    await api('DELETE', `/unknowns/${u.id}`);
    card.remove();
  }));
  card.append(img,
    h('span', { class: 'small muted' }, new Date(u.created_at_ms).toLocaleString(),
      u.best_inliers !== null && u.best_inliers !== undefined ? ` · best ${u.best_inliers} inliers` : ''),
    newForm, addForm, hint ? h('div', { class: 'row' }, hint) : null, h('div', { class: 'row' }, dismiss));
  return card;
}

// ---- routing ----------------------------------------------------------------------------

const VIEWS = { search: searchView, catalogue: catalogueView, class: classView, new: newClassView, unknowns: unknownsView };

function route() {
  for (const url of state.blobs.splice(0)) URL.revokeObjectURL(url);
  clearError();
  const [, name = 'search', arg] = location.hash.split('/');
  const view = VIEWS[name] || searchView;
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.view === (name === 'class' ? 'catalogue' : name)) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const main = document.getElementById('view');
  main.replaceChildren();
  view(main, arg && decodeURIComponent(arg));
  main.focus({ preventScroll: true });
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('key-button').addEventListener('click', () => askKey());
  window.addEventListener('hashchange', route);
  route();
});
