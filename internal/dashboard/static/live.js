// nixfarm dashboard: live updates. Everything is drawn by the server;
// without JavaScript the pages work, unrefreshed.
//
// - A [data-live] element is the live part of a page: every POLL_MS it
//   is fetched again from its URL (an HTML fragment the server draws with
//   the page's own template) and swapped in.
// - A [data-tail] element shows the last lines of a build's log, read
//   from the API's log route from the offset it last read to.
// - A [data-log] element streams a build's whole log.
//
// Polling pauses while the tab is hidden and backs off after errors; the
// header says which: live, paused, reconnecting.
"use strict";

const TAIL_LINES = 12;
const TAIL_CHARS = 64 * 1024;
const POLL_MS = 2500;
const MAX_BACKOFF_MS = 30000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function hidden() {
  return document.visibilityState === "hidden";
}

// whenVisible resolves once the tab is shown.
function whenVisible() {
  if (!hidden()) return Promise.resolve();
  return new Promise((resolve) => {
    const on = () => {
      if (hidden()) return;
      document.removeEventListener("visibilitychange", on);
      resolve();
    };
    document.addEventListener("visibilitychange", on);
  });
}

// The indicator: one per page, in the header, shown once something is
// live. Its state is the worst of the pollers'.
let indicator = null;
const failing = new Set();
let loggedOut = false;

function showState() {
  if (!indicator) {
    indicator = document.createElement("span");
    indicator.className = "live-state";
    indicator.id = "live-state";
    indicator.setAttribute("role", "status");
    const top = document.querySelector("header.top .who") || document.body;
    top.prepend(indicator);
  }
  let state = "live", text = "live";
  if (loggedOut) {
    state = "off"; text = "logged out: reload";
  } else if (hidden()) {
    state = "paused"; text = "paused";
  } else if (failing.size > 0) {
    state = "reconnecting"; text = "reconnecting…";
  }
  indicator.dataset.state = state;
  indicator.textContent = text;
}
document.addEventListener("visibilitychange", () => indicator && showState());

// poll runs step every POLL_MS while the tab is visible; step returns
// false to stop, throws to back off.
async function poll(who, step, first) {
  let delay = POLL_MS;
  if (!first) await sleep(delay);
  for (;;) {
    await whenVisible();
    let again;
    try {
      again = await step();
      failing.delete(who);
      delay = POLL_MS;
    } catch (e) {
      failing.add(who);
      delay = Math.min(delay * 2, MAX_BACKOFF_MS);
      again = true;
    }
    showState();
    if (again === false) return;
    if (again !== "now") await sleep(delay);
  }
}

// live keeps region's content fresh. Log tails in it keep their element
// (and so what they read) across swaps.
function live(region) {
  const url = region.dataset.live;
  poll(region, async () => {
    const resp = await fetch(url, {credentials: "same-origin", headers: {Accept: "text/html"}});
    if (resp.status === 401) {
      loggedOut = true;
      return false;
    }
    if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
    const t = document.createElement("template");
    t.innerHTML = await resp.text();
    t.content.querySelectorAll("[data-tail]").forEach((el) => {
      const old = region.querySelector(`[data-tail="${CSS.escape(el.dataset.tail)}"]`);
      if (old) el.replaceWith(old);
    });
    region.replaceChildren(t.content);
    region.querySelectorAll("[data-tail]").forEach(tail);
    return true;
  }, false);
}

// keepLast returns text's last n lines (and the line being written).
function keepLast(text, n) {
  const parts = text.split("\n");
  if (parts.length > n + 1) text = parts.slice(-(n + 1)).join("\n");
  return text.length > TAIL_CHARS ? text.slice(-TAIL_CHARS) : text;
}

// tail keeps el showing the last lines of build id's log: it asks the
// log route for what follows the offset it read to, until the build has
// ended and all is read, or el leaves the page.
function tail(el) {
  if (el.dataset.tailing) return;
  el.dataset.tailing = "1";
  const id = el.dataset.tail;
  const decoder = new TextDecoder();
  let offset = 0, text = "";
  poll(el, async () => {
    if (!el.isConnected) return false;
    const resp = await fetch(`/api/v1/builds/${encodeURIComponent(id)}/log?offset=${offset}`, {credentials: "same-origin"});
    if (resp.status === 401 || resp.status === 403 || resp.status === 404) {
      el.textContent = "(log not available)";
      return false;
    }
    if (!resp.ok) throw new Error(`log ${id}: ${resp.status}`);
    const start = Number(resp.headers.get("X-Log-Start"));
    const next = Number(resp.headers.get("X-Log-Offset"));
    const chunk = decoder.decode(await resp.arrayBuffer(), {stream: true});
    if (!Number.isSafeInteger(next) || !Number.isSafeInteger(start)) throw new Error("no X-Log-Offset");
    if (start < offset) text = ""; // the log started again
    text = keepLast(text + chunk, TAIL_LINES);
    offset = next;
    el.textContent = text.replace(/\n$/, "") || "(no output yet)";
    el.dataset.offset = String(offset);
    if (resp.headers.get("X-Log-More") === "1") return "now";
    const status = resp.headers.get("X-Build-Status");
    return status === "queued" || status === "running";
  }, true);
}

// stream shows build id's whole log in el, streaming it as the build
// writes it (the API's log route keeps the response open until the build
// ends).
async function stream(el) {
  const id = el.dataset.log;
  const follow = el.dataset.follow === "1" ? "1" : "0";
  try {
    const resp = await fetch(`/api/v1/builds/${encodeURIComponent(id)}/log?follow=${follow}`, {credentials: "same-origin"});
    if (!resp.ok) {
      el.textContent = `(log not available: ${resp.status})`;
      return;
    }
    el.textContent = "";
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      el.textContent += decoder.decode(value, {stream: true});
      if (atBottom && follow === "1") window.scrollTo(0, document.body.scrollHeight);
    }
    el.textContent += decoder.decode();
    if (!el.textContent) el.textContent = "(empty log)";
    if (follow === "1") {
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = "The build has ended: reload for its status.";
      el.after(note);
    }
  } catch (e) {
    el.textContent += "\n(the log stream broke off: reload to resume)";
  }
}

const regions = document.querySelectorAll("[data-live]");
if (regions.length > 0) showState();
regions.forEach(live);
document.querySelectorAll("[data-tail]").forEach(tail);
document.querySelectorAll("[data-log]").forEach(stream);
