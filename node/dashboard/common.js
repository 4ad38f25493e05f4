// ptth: what the overview and the chirp page share: the access token, calls to the
// node's local API, building DOM nodes (text only: nothing from the network is ever
// parsed as markup), and formatting.
"use strict";

const ptth = (() => {
  const TOKEN_KEY = "ptth.token";

  // -- DOM ----------------------------------------------------------------------------

  // el("td", {class: "num", title: "..."}, "text", otherNode): strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = value === null || value === undefined ? "–" : String(value);
  }

  // Replace a table body's rows; an empty list shows one muted row saying `empty`.
  function setRows(id, rows, empty) {
    const body = document.getElementById(id);
    if (!body) return;
    if (rows.length === 0) {
      const columns = body.closest("table").querySelectorAll("thead th").length || 1;
      rows = [el("tr", {class: "empty"}, el("td", {colspan: columns}, empty))];
    }
    body.replaceChildren(...rows);
  }

  // A node id, shortened, with the whole id in its title (and a name if known).
  function nodeCell(id, name) {
    if (!id) return el("span", {class: "muted"}, "–");
    return el("span", {class: "node", title: id},
      el("code", {}, id.slice(0, 10)), name ? el("span", {class: "name"}, " " + name) : null);
  }

  function badge(state) {
    const kind = {up: "ok", delivered: "ok", "backing-off": "warn", queued: "info",
      forwarded: "info", held: "warn", published: "info", down: "bad", dropped: "bad"}[state];
    return el("span", {class: "badge " + (kind || "muted")}, state || "–");
  }

  // -- formatting ---------------------------------------------------------------------

  const number = new Intl.NumberFormat();

  function count(value) {
    return typeof value === "number" ? number.format(value) : "–";
  }

  function bytes(value) {
    if (typeof value !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let size = value;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(size) : size.toFixed(size < 10 ? 1 : 0)) + " " + units[unit];
  }

  function rate(value) {
    if (typeof value !== "number") return "–";
    if (value === 0) return "0";
    if (value < 10) return value.toFixed(value < 1 ? 2 : 1);
    return number.format(Math.round(value));
  }

  // A duration in seconds, for a human: 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h.
  function duration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  // How long before `now` (both ms since the epoch) `then` was.
  function ago(then, now) {
    if (typeof then !== "number" || !then) return "never";
    return duration((now - then) / 1000) + " ago";
  }

  function clock(ms) {
    if (typeof ms !== "number") return "–";
    return new Date(ms).toLocaleTimeString([], {hour12: false});
  }

  function when(ms) {
    if (typeof ms !== "number") return "–";
    return new Date(ms).toLocaleString([], {hour12: false});
  }

  // -- the token ----------------------------------------------------------------------

  // Take the token from the address's fragment (#token=...: never sent to the server),
  // keep it, and take it out of the address bar and the history.
  function takeToken() {
    if (location.hash.length > 1) {
      const fragment = new URLSearchParams(location.hash.slice(1));
      const token = fragment.get("token");
      if (token) {
        localStorage.setItem(TOKEN_KEY, token);
        fragment.delete("token");
        const rest = fragment.toString();
        history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
      }
    }
    return localStorage.getItem(TOKEN_KEY);
  }

  function token() {
    return localStorage.getItem(TOKEN_KEY);
  }

  function forget() {
    localStorage.removeItem(TOKEN_KEY);
  }

  // What the login form was given: a token, or a whole link with #token=.
  function tokenFrom(text) {
    const found = /[#&?]token=([^&\s#]+)/.exec(text);
    return (found ? decodeURIComponent(found[1]) : text).trim();
  }

  class Unauthorized extends Error {}

  // Call the local API with the bearer token; the parsed JSON answer, or an Error with
  // the node's own words (Unauthorized for a 401: the login form is shown again).
  async function api(method, path, {query, body, type} = {}) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(query || {})) url.searchParams.set(name, value);
    const headers = {Authorization: "Bearer " + token()};
    if (type) headers["Content-Type"] = type;
    const response = await fetch(url, {method, headers, body, cache: "no-store"});
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (response.status === 401) {
      showLogin("The node did not take the token (a node makes a new one each time it " +
        "starts): run ptth dashboard for a fresh link.");
      throw new Unauthorized("unauthorized");
    }
    if (!response.ok) {
      throw new Error((answer && answer.error) || "the node answered " + response.status);
    }
    return answer;
  }

  // An EventSource on the local API (a browser's EventSource cannot set headers: the
  // token goes in the query, which the API allows for GETs).
  function events(path, query) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(query || {})) url.searchParams.set(name, value);
    url.searchParams.set("access_token", token());
    return new EventSource(url);
  }

  // After a stream failed for good: a 401 shows the login form; anything else retries.
  async function streamFailed(retry) {
    try {
      await api("GET", "/api/v1/overview");
    } catch (error) {
      if (error instanceof Unauthorized) return;
    }
    setTimeout(retry, 3000);
  }

  function connection(state, words) {
    const pill = document.getElementById("connection");
    // Only a change is written: the pill is a live region, read out when it changes.
    if (!pill || (pill.className === "pill " + state && pill.textContent === words)) return;
    pill.className = "pill " + state;
    pill.textContent = words;
  }

  // -- the login form -----------------------------------------------------------------

  let started = null;

  function showLogin(problem) {
    forget();
    connection("off", "no token");
    document.getElementById("app").hidden = true;
    document.getElementById("login").hidden = false;
    const line = document.getElementById("login-problem");
    line.hidden = !problem;
    line.textContent = problem || "";
    document.getElementById("login-token").focus();
  }

  // Run `start` once a token is known: now if the page has one, else after the form.
  function withToken(start) {
    document.getElementById("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("login-token");
      const given = tokenFrom(input.value);
      if (!given) return;
      localStorage.setItem(TOKEN_KEY, given);
      input.value = "";
      document.getElementById("login").hidden = true;
      document.getElementById("app").hidden = false;
      started(given);
    });
    started = start;
    const known = takeToken();
    if (known) {
      document.getElementById("app").hidden = false;
      start(known);
    } else {
      showLogin("");
    }
  }

  return {
    Unauthorized, ago, api, badge, bytes, clock, connection, count, duration, el, events,
    nodeCell, rate, setRows, setText, showLogin, streamFailed, token, when, withToken,
  };
})();
