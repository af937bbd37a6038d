// The clinic page: pick or drop radiographs, give each patient's sex (and optionally age), send them
// one by one to /api/predict, show each result with its QC overlay, a results table, CSV and print.
// Plain browser JavaScript, no libraries: the page must work offline on a Raspberry Pi.
"use strict";

const cases = [];          // {id, file, card, row, result, error}
let maxUpload = 100 * 1024 * 1024;  // replaced by the server's limit from /api/info
let nextId = 1;

const $ = (sel, root = document) => root.querySelector(sel);

function yearsMonths(months) {
  const total = Math.round(Math.abs(months));
  return `${months < 0 ? "-" : ""}${Math.floor(total / 12)} y ${total % 12} m`;
}

function signed(x) { return (x > 0 ? "+" : "") + x.toFixed(1); }

async function loadInfo() {
  try {
    const r = await fetch("/api/info");
    const info = await r.json();
    if (info.serve) maxUpload = info.serve.max_upload_bytes;
    const m = info.model || {};
    $("#model-line").textContent = m.error ? `Model problem: ${m.error}` :
      `Model ${m.name}, backend ${info.auto_backend || "?"}, edgeba ${info.edgeba}.`;
  } catch (e) {
    $("#model-line").textContent = "The server did not answer; is edgeba serve still running?";
  }
}

// A file is DICOM when it has the 'DICM' marker at byte 128 (or a DICOM name); only then ask the
// server for the header fields that prefill the form.
async function isDicom(file) {
  if (/\.(dcm|dicom)$/i.test(file.name)) return true;
  const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...head) === "DICM";
}

async function prefillFromDicom(c) {
  if (!(await isDicom(c.file)) || c.file.size > maxUpload) return;
  const body = new FormData();
  body.append("file", c.file, c.file.name);
  try {
    const r = await fetch("/api/dicom-header", { method: "POST", body });
    const h = await r.json();
    if (!r.ok || !h.dicom) return;
    const form = $(".case-form", c.card);
    if (h.sex) { form.sex.value = h.sex; $(".from-dicom", c.card).hidden = false; }
    if (h.birth_date) form.birth_date.value = h.birth_date;
    if (h.study_date) form.study_date.value = h.study_date;
    if (h.age_months != null && !(h.birth_date && h.study_date)) form.age_months.value = h.age_months;
  } catch (e) { /* no prefill: the user fills the form */ }
}

function addFiles(files) {
  for (const file of files) {
    const id = nextId++;
    const card = $("#case-template").content.firstElementChild.cloneNode(true);
    card.id = `case-${id}`;
    $(".case-title", card).textContent = file.name;
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td><td></td><td></td><td></td>";
    row.cells[0].textContent = file.name;
    const c = { id, file, card, row, result: null, error: null };
    $(".remove", card).addEventListener("click", () => removeCase(c));
    $(".print-one", card).addEventListener("click", () => printCases(c));
    $(".sex", card).addEventListener("change", () => { $(".from-dicom", card).hidden = true; });
    cases.push(c);
    $("#cases").append(card);
    $("#results tbody").append(row);
    if (file.size > maxUpload) setError(c, `${file.name} is ${(file.size / 2 ** 20).toFixed(0)} MB, over the ${(maxUpload / 2 ** 20).toFixed(0)} MB limit`);
    prefillFromDicom(c);
  }
  refresh();
}

function removeCase(c) {
  cases.splice(cases.indexOf(c), 1);
  c.card.remove();
  c.row.remove();
  refresh();
}

function setStatus(c, text, isError = false) {
  const s = $(".status", c.card);
  s.textContent = text;
  s.classList.toggle("error", isError);
  c.row.cells[5].textContent = text;
}

function setError(c, message) {
  c.error = message;
  c.result = null;
  c.card.classList.remove("done");
  $(".result", c.card).hidden = true;
  setStatus(c, message, true);
}

function chronological(j) {
  if (j.chronological_age_months == null) return "not given";
  return `${j.chronological_age_months.toFixed(1)} months (${yearsMonths(j.chronological_age_months)})`;
}

function showResult(c, j) {
  c.result = j;
  c.error = null;
  const card = c.card;
  const field = (name, text) => { $(`[data-field="${name}"]`, card).textContent = text; };
  field("bone_age_months", j.bone_age_months.toFixed(1));
  field("bone_age", j.bone_age);
  const interval = Array.isArray(j.interval_months) ? j.interval_months : null;  // present once the model provides one
  $(".interval", card).hidden = !interval;
  if (interval) field("interval", `${interval[0].toFixed(1)} to ${interval[1].toFixed(1)}`);
  field("sex", j.sex ? `${j.sex}${j.sex_source === "dicom" ? " (from the DICOM header)" : ""}` : "not used by this model");
  field("chronological", chronological(j));
  field("difference", j.bone_minus_chronological_months == null ? "needs the chronological age"
    : `${signed(j.bone_minus_chronological_months)} months`);
  const list = $(".warnings", card);
  list.replaceChildren(...(j.warnings.length ? j.warnings : [null]).map(w => {
    const li = document.createElement("li");
    li.textContent = w === null ? "none" : w;
    if (w === null) li.className = "none";
    return li;
  }));
  field("engine", `${j.backend} (${[...new Set(Object.values(j.formats || {}))].join(", ")}), model ${j.model}`);
  $(".estimated-at", card).textContent = new Date().toLocaleString();
  field("file", j.file);
  $(".overlay", card).src = j.overlay_png;
  $(".result", card).hidden = false;
  card.classList.add("done");
  const cells = c.row.cells;
  cells[1].textContent = j.sex || "";
  cells[2].textContent = `${j.bone_age_months.toFixed(1)} months (${j.bone_age})` + (interval ? ` [${interval[0].toFixed(0)}-${interval[1].toFixed(0)}]` : "");
  cells[3].textContent = j.chronological_age_months == null ? "" : j.chronological_age_months.toFixed(1);
  cells[4].textContent = j.bone_minus_chronological_months == null ? "" : signed(j.bone_minus_chronological_months);
  setStatus(c, j.warnings.length ? `done, ${j.warnings.length} warning(s): read them before using the result` : "done");
}

async function estimate(c) {
  const form = $(".case-form", c.card);
  if (c.file.size > maxUpload) return;  // already reported
  if (!form.sex.value) { setError(c, "Choose the patient's sex: the model needs it and never assumes it."); return; }
  const body = new FormData();
  body.append("file", c.file, c.file.name);
  for (const name of ["sex", "birth_date", "study_date", "age_months"]) {
    if (form[name].value) body.append(name, form[name].value);
  }
  setStatus(c, "estimating...");
  try {
    const r = await fetch("/api/predict", { method: "POST", body });
    const j = await r.json().catch(() => ({ error: `the server answered ${r.status} without a reason` }));
    if (r.ok) showResult(c, j); else setError(c, j.error || `error ${r.status}`);
  } catch (e) {
    setError(c, "The server could not be reached; is edgeba serve still running?");
  }
}

async function estimateAll() {
  const button = $("#estimate");
  button.disabled = true;
  try {
    for (const c of [...cases]) if (!c.result) await estimate(c);  // one at a time: the server runs one model
  } finally {
    button.disabled = false;
    refresh();
  }
}

function refresh() {
  $("#summary").hidden = cases.length === 0;
  const done = cases.some(c => c.result);
  $("#download-csv").disabled = !done;
  $("#print-all").disabled = !done;
}

const CSV_COLUMNS = ["file", "sex", "sex_source", "bone_age_months", "bone_age", "interval_low_months", "interval_high_months",
  "chronological_age_months", "bone_minus_chronological_months", "warnings", "backend", "model", "error"];

function csvCell(v) {
  const s = v == null ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCsv() {
  const rows = [CSV_COLUMNS.join(",")];
  for (const c of cases) {
    const j = c.result || {};
    const iv = Array.isArray(j.interval_months) ? j.interval_months : [null, null];
    const values = { ...j, file: j.file || c.file.name, interval_low_months: iv[0], interval_high_months: iv[1],
      warnings: (j.warnings || []).join("; "), error: c.error };
    rows.push(CSV_COLUMNS.map(k => csvCell(values[k])).join(","));
  }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([rows.join("\r\n") + "\r\n"], { type: "text/csv" }));
  a.download = `bone-age-${new Date().toISOString().slice(0, 10)}.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function printCases(only) {
  document.body.classList.toggle("print-one", !!only);
  cases.forEach(c => c.card.classList.toggle("printing", c === only));
  window.print();
}

window.addEventListener("afterprint", () => document.body.classList.remove("print-one"));

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  const input = $("#files");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  const zone = $("#drop-zone");
  for (const t of ["dragenter", "dragover"]) zone.addEventListener(t, e => { e.preventDefault(); zone.classList.add("dragging"); });
  for (const t of ["dragleave", "drop"]) zone.addEventListener(t, e => { e.preventDefault(); zone.classList.remove("dragging"); });
  zone.addEventListener("drop", e => addFiles(e.dataTransfer.files));
  // A file dropped outside the zone must not replace the page (and lose the results).
  window.addEventListener("dragover", e => e.preventDefault());
  window.addEventListener("drop", e => e.preventDefault());
  $("#estimate").addEventListener("click", estimateAll);
  $("#download-csv").addEventListener("click", downloadCsv);
  $("#print-all").addEventListener("click", () => printCases(null));
  $("#clear").addEventListener("click", () => { for (const c of [...cases]) removeCase(c); });
});
