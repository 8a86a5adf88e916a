/* fvmatch online: the lab's matching task in the browser (jsPsych 8).
 *
 * The server (fvmatch-online serve) sends the participant's trial list, built by the lab's design code,
 * and the lab's trial layout in degrees of visual angle. This page calibrates pixels per degree (virtual
 * chinrest: credit card, blind spot), preloads the images, runs the trials and posts each one as soon as it
 * is answered; the next trial starts only after the server has saved it (fsync). A reload or a new browser
 * asks the server again and continues after the last saved trial.
 *
 * In a JATOS study package (fvmatch-online jatos-export; jatos.js is loaded first) there is no fvmatch server:
 * the page takes a precomputed plan (plans/slot-<k>.json, the lab's trial list for counterbalance index k) from
 * the JATOS batch session and appends each start, event, trial and finish to the JATOS result as one JSON line
 * (jatos.appendResultData) as it happens; a reload continues from the study session data.
 */
"use strict";

const API = "api/";
const JATOS = typeof window.jatos !== "undefined";
let params = Object.fromEntries(new URLSearchParams(window.location.search));
let jsPsych = null;
let study = null; // the api/start answer
let pxPerDeg = null;

// ---------------------------------------------------------------------------------------------
// Server calls: retried while the network is down, so an answer is never lost on the way.

async function post(path, body, { retry = true } = {}) {
  if (JATOS) return jatosPost(path, body);
  let wait = 500;
  for (;;) {
    let resp;
    try {
      resp = await fetch(API + path, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ params, run: study ? study.run : null, ...body }),
      });
    } catch (err) {
      if (!retry) throw err;
      notice("Connection lost. Retrying... (your answers so far are saved)");
      await sleep(wait);
      wait = Math.min(wait * 2, 8000);
      continue;
    }
    notice(null);
    const data = await resp.json().catch(() => ({ error: `server answered ${resp.status}` }));
    if (data.superseded) { fatal(data.error); throw new Error(data.error); }
    if (resp.status >= 500 && retry) {
      await sleep(wait);
      wait = Math.min(wait * 2, 8000);
      continue;
    }
    return { status: resp.status, data };
  }
}

// ---------------------------------------------------------------------------------------------
// JATOS: the same four calls, answered in the page; every record is appended to the JATOS result.

const ID_PARAMS = ["PROLIFIC_PID", "workerId", "participant"]; // as online/sessions.py: first present wins
let jt = null; // {pid, slot, run, next, plan, completionUrl}

async function fetchJson(url) {
  for (let wait = 500; ; wait = Math.min(wait * 2, 8000)) {
    try { const r = await fetch(url); if (r.ok) return await r.json(); } catch (err) { /* retried */ }
    notice("Connection lost. Retrying..."); await sleep(wait);
  }
}

async function jatosAppend(kind, body) {
  const line = JSON.stringify({ fvmatch: kind, pid: jt.pid, slot: jt.slot, plan_id: jt.plan.plan_id, run: jt.run, t: isoNow(), ...body }) + "\n";
  for (let wait = 500; ; wait = Math.min(wait * 2, 8000)) {
    try { await jatos.appendResultData(line); notice(null); return; } catch (err) {
      notice("Connection lost. Retrying... (your answers so far are saved)"); await sleep(wait);
    }
  }
}

function jatosSaveState() {
  const p = jatos.setStudySessionData({ fvmatch: { pid: jt.pid, slot: jt.slot, run: jt.run, next: jt.next } });
  return Promise.resolve(p).catch(() => {}); // only for a reload; the result lines are the data
}

async function jatosSlot(n) {
  // the batch session counts the slots handed out, so participants take consecutive counterbalance indices
  for (let i = 0; i < 5; i++) {
    try {
      const k = Number(jatos.batchSession.get("fvmatch_next_slot") || 0);
      await jatos.batchSession.set("fvmatch_next_slot", k + 1);
      return k % n;
    } catch (err) { await sleep(200 * (i + 1)); }
  }
  return (Number(jatos.studyResultId) || 0) % n;
}

async function jatosPost(path, body) {
  const { params: _p, run: _r, ...rest } = body || {};
  if (path === "start") {
    params = { ...(jatos.urlQueryParameters || {}) };
    const key = ID_PARAMS.find((k) => params[k]);
    if (!key) params.participant = `jatos${jatos.workerId}`;
    const pid = params[key || "participant"];
    const index = await fetchJson("plans/index.json");
    const saved = (jatos.studySessionData || {}).fvmatch;
    const again = saved && saved.pid === pid;
    const slot = again ? saved.slot : await jatosSlot(index.n_slots);
    const plan = await fetchJson(`plans/slot-${String(slot).padStart(3, "0")}.json`);
    jt = { pid, slot, run: again ? saved.run + 1 : 0, next: again ? saved.next : 0, plan, completionUrl: index.completion_url };
    await jatosSaveState();
    await jatosAppend("start", { params, client: rest.client, counterbalance: plan.counterbalance, seed: plan.seed,
                                 start_index: jt.next, jatos: { studyResultId: jatos.studyResultId, workerId: jatos.workerId } });
    return { status: 200, data: { ...plan, participant: pid, run: jt.run, start_index: jt.next, resumed: jt.run > 0 } };
  }
  if (path === "trial") {
    await jatosAppend("trial", rest);
    jt.next = rest.trial_index + 1;
    await jatosSaveState();
    const answer = jt.plan.practice_answers[String(rest.trial_index)];
    const feedback = answer ? { correct: answer.map((c, i) => rest.assignment[i] === c), answer } : undefined;
    return { status: 200, data: { saved: rest.trial_index, next_index: jt.next, feedback } };
  }
  if (path === "event") { await jatosAppend("event", rest); return { status: 200, data: { ok: true } }; }
  await jatosAppend("finish", {}); // path === "finish"
  return { status: 200, data: { completed: true, completion_url: jt.completionUrl } };
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function notice(text) {
  let el = document.getElementById("fv-notice");
  if (!text) { if (el) el.remove(); return; }
  if (!el) { el = document.createElement("div"); el.id = "fv-notice"; el.className = "fv-notice"; document.body.appendChild(el); }
  el.textContent = text;
}

function fatal(text) {
  document.body.innerHTML = "";
  const d = document.createElement("div");
  d.id = "fv-fatal";
  d.style.cssText = "color:#fff;background:#808080;position:fixed;inset:0;padding:3em;font-size:1.2em";
  d.textContent = text;
  document.body.appendChild(d);
}

// ---------------------------------------------------------------------------------------------
// Pairing rules: the same as experiment/matching.py (the server replays the clicks with that code).

class PairingState {
  constructor() { this.pairs = new Map(); this.selected = null; }
  click(side, row) {
    if (this.selected === null || this.selected[0] === side) {
      this.selected = this.selected && this.selected[1] === row ? null : [side, row];
      return;
    }
    const [ref, cand] = side === "reference" ? [row, this.selected[1]] : [this.selected[1], row];
    for (const [r, c] of [...this.pairs]) if (r === ref || c === cand) this.pairs.delete(r);
    this.pairs.set(ref, cand);
    this.selected = null;
  }
  get complete() { return this.pairs.size === 3; }
  assignment() { return [0, 1, 2].map((i) => this.pairs.get(i)); }
}

// ---------------------------------------------------------------------------------------------
// The matching trial as a jsPsych plugin.

function psychopyRgb(v) { return `rgb(${v.map((x) => Math.round((x + 1) * 127.5)).join(",")})`; }

class MatchPlugin {
  constructor(jsPsych) { this.jsPsych = jsPsych; }

  async trial(el, par) {
    const t = par.spec;
    const disp = study.display;
    const lay = study.layouts[String(t.n_images)];
    const W = window.innerWidth, H = window.innerHeight;
    const X = (x) => W / 2 + x * pxPerDeg, Y = (y) => H / 2 - y * pxPerDeg, L = (d) => d * pxPerDeg;
    const textPx = L(disp.text_deg);
    el.innerHTML = "";
    const stage = document.createElement("div");
    stage.id = "fv-stage";
    stage.style.background = psychopyRgb(disp.background);
    stage.style.fontSize = `${textPx}px`;
    el.appendChild(stage);
    await sleep(1000 * study.timing.iti_s); // blank inter-trial interval, as in the lab

    const rows = { reference: [], candidate: [] };
    for (const side of ["reference", "candidate"]) {
      lay.rows[side].forEach((r, i) => {
        const d = document.createElement("div");
        d.className = "fv-row"; d.dataset.side = side; d.dataset.row = i; d.id = `fv-${side}-${i}`;
        Object.assign(d.style, { left: `${X(r.x - r.w / 2)}px`, top: `${Y(r.y + r.h / 2)}px`, width: `${L(r.w)}px`, height: `${L(r.h)}px` });
        stage.appendChild(d);
        rows[side].push(d);
      });
      (side === "reference" ? t.reference : t.candidate).forEach((files, r) => files.forEach((url, k) => {
        const [x, y] = lay.images[side][r][k];
        const img = document.createElement("img");
        img.className = "fv-img"; img.src = url; img.draggable = false;
        Object.assign(img.style, { left: `${X(x - lay.image_deg / 2)}px`, top: `${Y(y + lay.image_deg / 2)}px`,
                                   width: `${L(lay.image_deg)}px`, height: `${L(lay.image_deg)}px` });
        stage.appendChild(img);
      }));
    }
    const text = (content, yDeg, cls = "fv-text", size = 1) => {
      const d = document.createElement("div");
      d.className = cls; d.textContent = content;
      d.style.top = `${Y(yDeg) - size * textPx * 0.65}px`; d.style.fontSize = `${size * textPx}px`;
      stage.appendChild(d); return d;
    };
    text("Click a row on the right, then the row on the left that shows the same unit.", lay.title_y);
    const ref0 = lay.rows.reference[0], cand0 = lay.rows.candidate[0];
    const lab1 = text("reference rows", ref0.y + ref0.h / 2 + 0.6 * disp.text_deg, "fv-label", 0.7);
    lab1.style.right = `${W - X(ref0.x + ref0.w / 2)}px`;
    const lab2 = text("rows to match", cand0.y + cand0.h / 2 + 0.6 * disp.text_deg, "fv-label", 0.7);
    lab2.style.left = `${X(cand0.x - cand0.w / 2)}px`;
    const progress = text(`Trial ${t.trial_index + 1} of ${study.n_trials}${t.is_practice ? "  (practice)" : ""}`, lay.progress_y, "fv-text", 0.7);
    progress.style.color = "#4d4d4d";
    progress.id = "fv-progress";
    const c = lay.confirm;
    const confirm = document.createElement("div");
    confirm.id = "fv-confirm"; confirm.className = "disabled"; confirm.textContent = "Confirm";
    Object.assign(confirm.style, { left: `${X(c.x - c.w / 2)}px`, top: `${Y(c.y + c.h / 2)}px`, width: `${L(c.w)}px`, height: `${L(c.h)}px` });
    stage.appendChild(confirm);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.id = "fv-lines"; svg.setAttribute("width", W); svg.setAttribute("height", H);
    stage.appendChild(svg);

    const state = new PairingState();
    const colors = disp.pair_colors;
    const line = (a, b, color, width, dy = 0) => {
      const ln = document.createElementNS("http://www.w3.org/2000/svg", "line");
      ln.setAttribute("x1", X(a.x + a.w / 2)); ln.setAttribute("y1", Y(a.y + dy));
      ln.setAttribute("x2", X(b.x - b.w / 2)); ln.setAttribute("y2", Y(b.y + dy));
      ln.setAttribute("stroke", color); ln.setAttribute("stroke-width", width);
      svg.appendChild(ln);
    };
    const draw = (verdict = null, answer = null) => {
      svg.innerHTML = "";
      for (const side of ["reference", "candidate"]) for (const d of rows[side]) { d.style.borderColor = "#4d4d4d"; d.style.borderWidth = "2px"; }
      for (const [ref, cand] of state.pairs) {
        const color = verdict === null ? colors[ref] : (verdict[ref] ? "#33cc33" : "#e62626");
        for (const d of [rows.reference[ref], rows.candidate[cand]]) { d.style.borderColor = color; d.style.borderWidth = "5px"; }
        line(lay.rows.reference[ref], lay.rows.candidate[cand], color, 5);
      }
      if (answer) answer.forEach((cand, i) => { if (!verdict[i]) line(lay.rows.reference[i], lay.rows.candidate[cand], "#fff", 2, 0.3); });
      if (state.selected) { const d = rows[state.selected[0]][state.selected[1]]; d.style.borderColor = "#fff"; d.style.borderWidth = "5px"; }
      confirm.className = state.complete ? "" : "disabled";
    };

    // Onset: the first frame with the stimuli; clicks are timed from it, minus time the page was hidden.
    await new Promise((r) => requestAnimationFrame(r));
    const onsetPerf = performance.now();
    const onsetIso = isoNow();
    let hiddenMs = 0, hiddenAt = null;
    const onVis = () => {
      if (document.hidden) hiddenAt = performance.now();
      else if (hiddenAt !== null) { hiddenMs += performance.now() - hiddenAt; hiddenAt = null; }
    };
    document.addEventListener("visibilitychange", onVis);
    const intervals = [];
    let frames = 0, last = onsetPerf, running = true;
    const tick = (now) => { if (!running) return; frames++; intervals.push(now - last); last = now; requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
    const clicks = [];
    const tNow = () => Math.round(performance.now() - onsetPerf - hiddenMs) / 1000;

    await new Promise((resolve) => {
      stage.dataset.trial = t.trial_index;
      stage.dataset.ready = "1"; // listening for clicks (tests wait for this)
      stage.addEventListener("click", (ev) => {
        const row = ev.target.closest(".fv-row");
        if (row) {
          const side = row.dataset.side, r = Number(row.dataset.row);
          clicks.push([tNow(), side, r]);
          state.click(side, r);
          draw();
        } else if (ev.target === confirm && state.complete) {
          clicks.push([tNow(), "confirm", null]);
          resolve();
        }
      });
    });
    running = false;
    document.removeEventListener("visibilitychange", onVis);
    const med = intervals.length ? [...intervals].sort((a, b) => a - b)[Math.floor(intervals.length / 2)] : 0;
    const mean = intervals.length ? intervals.reduce((a, b) => a + b, 0) / intervals.length : null;
    const sd = intervals.length > 1 ? Math.sqrt(intervals.reduce((a, b) => a + (b - mean) ** 2, 0) / (intervals.length - 1)) : null;
    const body = {
      trial_index: t.trial_index, clicks, assignment: state.assignment(), onset: onsetIso, paused_s: hiddenMs / 1000,
      frames: { frames, frames_dropped: intervals.filter((x) => x > 1.5 * med).length,
                frame_interval_mean_ms: mean, frame_interval_sd_ms: sd },
    };
    confirm.className = "disabled";
    const { status, data } = await post("trial", body);
    if (status === 409 && data.next_index > t.trial_index) {
      // saved before (the answer to an earlier try was lost): nothing to do
    } else if (status !== 200) {
      fatal(`The study cannot continue: ${data.error || status}. Please contact the researchers.`);
      throw new Error(data.error);
    }
    if (t.is_practice && data.feedback) {
      const { correct, answer } = data.feedback;
      const n = correct.filter(Boolean).length;
      confirm.style.display = "none";
      const fb = text(n === 3 ? "All three pairs are right!" : `${n} of 3 pairs right. Green: right, red: wrong; thin white lines show the right pairs.`, c.y);
      fb.id = "fv-feedback";
      draw(correct, answer);
      await sleep(1000 * study.timing.feedback_s);
    }
    this.jsPsych.finishTrial({ fvmatch_trial: t.trial_index, saved: true });
  }
}
MatchPlugin.info = { name: "fvmatch-match", version: "1.0.0", parameters: { spec: { type: jsPsychModule.ParameterType.OBJECT, default: undefined } }, data: {} };

function isoNow() {
  const d = new Date(), off = -d.getTimezoneOffset(), s = off >= 0 ? "+" : "-", a = Math.abs(off);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}${s}${p(Math.floor(a / 60))}:${p(a % 60)}`;
}

// ---------------------------------------------------------------------------------------------
// Screens

const INSTRUCTIONS = `<p>Welcome, and thank you for taking part.</p>
<p>On each screen you see three rows of images on the LEFT. Each row shows what one unit of an artificial neural
network responds to most strongly.</p>
<p>On the RIGHT are three more rows, one for each of the same three units, in shuffled order. They show either other
photographs or synthetic images made to excite the unit.</p>
<p>Your task: pair every row on the right with the row on the left that shows the same unit. Click a row on the right,
then the row on the left that belongs to it. Matching colours and a line show each pair; click again to change a pair.
When all three rows are paired, click Confirm.</p>
<p>Take the time you need; accuracy matters more than speed. Please stay in full screen and in this tab. Every answer
is saved at once: if the page closes, open the same link again to continue.</p>`;

function textScreen(html, button, extra = {}) {
  return { type: jsPsychHtmlButtonResponse, stimulus: html, choices: [button], ...extra };
}

function calibrationTrials() {
  const reps = study.online.blindspot_reps;
  return [{
    type: jsPsychVirtualChinrest,
    blindspot_reps: reps,
    resize_units: "none",
    item_path: null,
    adjustment_prompt: `<div style="text-align:left"><p>Sizes in this study are set for your screen. Hold a credit card (or any
      card of that size) against the screen and drag the lower right corner of the grey box until it has the size of the card.</p></div>`,
    adjustment_button_prompt: "The box has the size of the card",
    viewing_distance_report: "none",
    on_finish: (data) => {
      const pxPerCm = data.px2mm * 10;
      const measured = reps > 0 && Number.isFinite(data.view_dist_mm);
      const distanceCm = measured ? data.view_dist_mm / 10 : study.assumed_distance_cm;
      pxPerDeg = pxPerCm * distanceCm * 0.017455; // as PsychoPy's deg2cm, so degrees mean the same in lab and online
      post("event", { kind: "calibration", calibration: {
        px_per_cm: pxPerCm, viewing_distance_cm: distanceCm, distance_measured: measured, px_per_deg: pxPerDeg,
        screen_px: [window.screen.width, window.screen.height], window_px: [window.innerWidth, window.innerHeight],
        device_pixel_ratio: window.devicePixelRatio || 1 } });
    },
  }, {
    // the layout must fit the window at this calibration (sizes are never shrunk: degrees are the design)
    timeline: [textScreen("", "Try again", {
      stimulus: () => `<p>At your screen size and viewing distance the task needs a window of
        ${Math.ceil(neededPx()[0])} x ${Math.ceil(neededPx()[1])} pixels, but the window is ${window.innerWidth} x ${window.innerHeight}.
        Please make the window larger (full screen) or sit a little closer, then try again.</p>` })],
    conditional_function: () => !fits(),
    loop_function: () => !fits(),
  }];
}

function neededPx() {
  let w = 0, h = 0;
  for (const lay of Object.values(study.layouts)) { w = Math.max(w, lay.width + 1); h = Math.max(h, lay.height + 1); }
  return [w * pxPerDeg, h * pxPerDeg];
}

function fits() { const [w, h] = neededPx(); return w <= window.innerWidth && h <= window.innerHeight; }

function trialTimeline() {
  const trials = study.trials, start = study.start_index, n = study.n_trials;
  const nBlocks = Math.max(...trials.map((t) => t.block));
  const tl = [];
  if (start === 0) {
    let shown = 0;
    tl.push(textScreen(INSTRUCTIONS, "Start", {
      on_load: () => { shown = performance.now(); },
      on_finish: () => post("event", { kind: "instructions", seconds: (performance.now() - shown) / 1000 }),
    }));
    const nPractice = trials.filter((t) => t.is_practice).length;
    if (nPractice) tl.push(textScreen(`<p>First, ${nPractice} practice trials. After each one you see which pairs were right (green) and which were wrong (red).</p>`, "Start practice"));
  } else {
    tl.push(textScreen(`<p>Welcome back. The session continues with trial ${start + 1} of ${n}.</p><p>Reminder: click a row on the right,
      then the row on the left that shows the same unit; click Confirm when all three rows are paired.</p>`, "Continue"));
  }
  let prev = start > 0 ? trials[start - 1].block : null;
  for (const t of trials.slice(start)) {
    if (prev !== null && t.block !== prev) {
      if (prev === 0) {
        tl.push(textScreen(`<p>Practice is over; there is no more feedback from now on.</p><p>The experiment has ${nBlocks} blocks with a break after each.</p>`, "Start"));
      } else {
        tl.push(textScreen(`<p>Block ${prev} of ${nBlocks} done: ${t.trial_index} of ${n} trials finished.</p><p>Take a short break. Continue when you are ready.</p>`,
          "Continue", { enable_button_after: 1000 * study.timing.min_break_s }));
      }
    }
    prev = t.block;
    tl.push({ type: MatchPlugin, spec: t });
  }
  return tl;
}

function endScreen() {
  return {
    type: jsPsychHtmlButtonResponse, choices: [], trial_duration: null,
    stimulus: "<p id='fv-end'>Saving...</p>",
    on_load: async () => {
      const { status, data } = await post("finish", {});
      const el = document.getElementById("fv-end");
      if (status !== 200) { el.textContent = `Could not finish: ${data.error}`; return; }
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      if (JATOS) {
        el.textContent = "Thank you! The session is over." + (data.completion_url ? " You are now sent back to confirm your participation..." : "");
        setTimeout(() => (data.completion_url ? jatos.endStudyAndRedirect(data.completion_url) : jatos.endStudy()), 3000);
      } else if (data.completion_url) {
        el.innerHTML = "Thank you! The session is over. You are now sent back to confirm your participation... ";
        const a = document.createElement("a"); a.href = data.completion_url; a.textContent = "(click here if nothing happens)";
        el.appendChild(a);
        setTimeout(() => { window.location.href = data.completion_url; }, 3000);
      } else {
        el.textContent = "Thank you! The session is over. You can close this window.";
      }
    },
  };
}

async function main() {
  const client = { user_agent: navigator.userAgent };
  let resp;
  try {
    resp = await post("start", { client }, { retry: false });
  } catch (err) {
    fatal("The study server cannot be reached. Please check your connection and reload this page.");
    return;
  }
  if (resp.status !== 200) { fatal(`This study cannot start: ${resp.data.error}`); return; }
  study = resp.data;
  document.body.style.background = psychopyRgb(study.display.background);
  let lastBlur = 0;
  const lost = () => { const now = Date.now(); if (now - lastBlur > 500) { lastBlur = now; post("event", { kind: "focus_loss" }, { retry: false }).catch(() => {}); } };
  window.addEventListener("blur", lost);
  document.addEventListener("visibilitychange", () => { if (document.hidden) lost(); });

  jsPsych = jsPsychModule.initJsPsych({ display_element: document.body });
  const remaining = study.trials.slice(study.start_index);
  const images = [...new Set(remaining.flatMap((t) => [...t.reference.flat(), ...t.candidate.flat()]))];
  const timeline = [
    { type: jsPsychFullscreen, fullscreen_mode: true,
      message: "<p>The study runs in full screen. Please close other tabs and stay in full screen until the end.</p>",
      button_label: "Full screen" },
    { type: jsPsychBrowserCheck, minimum_width: study.online.min_width_px, minimum_height: study.online.min_height_px,
      features: ["width", "height", "browser", "browser_version", "mobile", "os"],
      inclusion_function: (d) => !d.mobile,
      exclusion_message: () => "<p>This study needs a computer with a mouse and a large enough window; it cannot run on a phone or a small window.</p>",
      window_resize_message: `<p>Your browser window is too small for this study. Please make it larger (at least
        <span id="browser-check-min-width"></span> x <span id="browser-check-min-height"></span> pixels; now
        <span id="browser-check-actual-width"></span> x <span id="browser-check-actual-height"></span>).</p>` },
    ...calibrationTrials(),
    { type: jsPsychPreload, images, message: "<p>Loading the images...</p>", max_load_time: 120000,
      error_message: "<p>The images could not be loaded. Please reload the page.</p>" },
    ...trialTimeline(),
    endScreen(),
  ];
  window.fvmatch = { study, get pxPerDeg() { return pxPerDeg; } }; // for tests and debugging
  await jsPsych.run(timeline);
}

if (JATOS) jatos.onLoad(main); else window.addEventListener("load", main);
