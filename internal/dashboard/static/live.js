// nixfarm dashboard: live log tails. Everything else is drawn by the
// server; without JavaScript the pages work, minus the live logs.
"use strict";

const TAIL_LINES = 12;
const POLL_MS = 2000;

// lastLines returns the last n lines of text.
function lastLines(text, n) {
  const lines = text.replace(/\n$/, "").split("\n");
  return lines.slice(-n).join("\n");
}

// tail keeps el showing the last lines of build id's log, polling the
// API's log route (?follow=0: what exists now) while the page is open.
async function tail(el) {
  const id = el.dataset.tail;
  for (;;) {
    try {
      const resp = await fetch(`/api/v1/builds/${encodeURIComponent(id)}/log?follow=0`, {credentials: "same-origin"});
      if (resp.status === 401 || resp.status === 403 || resp.status === 404) {
        el.textContent = "(log not available)";
        return;
      }
      if (resp.ok) {
        const text = await resp.text();
        el.textContent = text ? lastLines(text, TAIL_LINES) : "(no output yet)";
      }
    } catch (e) {
      // The farm restarted or the network hiccuped: try again.
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
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

document.querySelectorAll("[data-tail]").forEach(tail);
document.querySelectorAll("[data-log]").forEach(stream);
