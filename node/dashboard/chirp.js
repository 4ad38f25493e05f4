// ptth: chirp, the toy Twitter, for humans. The timeline is live over Server-Sent Events
// (GET /api/v1/chirp/timeline?follow=1); posting and following are API calls.
"use strict";

(() => {
  const {el} = ptth;
  const MAX_LENGTH = 1000;
  let me = null; // this node's id
  let names = new Map(); // node id -> peer name, from the overview
  let following = [];
  let stream = null;
  const shown = new Set(); // "author:id" of the posts on the timeline

  function status(id, words, problem) {
    const line = document.getElementById(id);
    line.textContent = words;
    line.classList.toggle("problem", Boolean(problem));
    line.setAttribute("role", problem ? "alert" : "status");
  }

  function author(id) {
    const name = names.get(id);
    return el("span", {class: "author", title: id},
      name ? el("strong", {}, name) : null,
      el("code", {}, id.slice(0, 10)));
  }

  function postItem(post) {
    return el("li", {class: "post", dataset: {id: post.id}},
      el("div", {class: "post-head"}, author(post.author),
        el("time", {datetime: new Date(post.ts).toISOString(), title: ptth.when(post.ts)},
          ptth.when(post.ts))),
      el("p", {class: "post-text"}, post.text));
  }

  // -- the timeline -------------------------------------------------------------------

  function openTimeline() {
    if (stream) stream.close();
    stream = null;
    shown.clear();
    document.getElementById("timeline").replaceChildren();
    updateTimelineCount();
    if (following.length === 0) {
      ptth.connection("idle", "following nobody");
      return;
    }
    ptth.connection("wait", "connecting…");
    const source = ptth.events("/api/v1/chirp/timeline", {follow: "1"});
    stream = source;
    source.addEventListener("open", () => ptth.connection("live", "live"));
    source.addEventListener("post", (event) => {
      const post = JSON.parse(event.data);
      const key = post.author + ":" + post.id;
      if (shown.has(key)) return;
      shown.add(key);
      // Newest first (a backlog comes oldest first).
      document.getElementById("timeline").prepend(postItem(post));
      updateTimelineCount();
    });
    source.addEventListener("end", () => source.close());
    source.addEventListener("error", () => {
      if (source !== stream) return;
      if (source.readyState === EventSource.CLOSED) {
        stream = null;
        ptth.connection("off", "disconnected");
        ptth.streamFailed(openTimeline);
      } else {
        ptth.connection("wait", "reconnecting…");
      }
    });
  }

  function updateTimelineCount() {
    const count = shown.size;
    ptth.setText("timeline-count", count === 1 ? "1 post" : count + " posts");
    document.getElementById("timeline-empty").hidden = following.length > 0;
  }

  // -- following ----------------------------------------------------------------------

  function showFollowing(ids) {
    following = ids;
    ptth.setText("following-count", String(ids.length));
    const list = document.getElementById("following");
    list.replaceChildren(...(ids.length ? ids.map((id) => el("li", {},
      author(id),
      el("button", {type: "button", class: "quiet", "aria-label": "Unfollow " + id,
        onclick: () => unfollow(id)}, "Unfollow"),
    )) : [el("li", {class: "muted"}, "nobody yet")]));
  }

  async function follow(event) {
    event.preventDefault();
    const input = document.getElementById("follow-id");
    const id = input.value.trim();
    if (!id) return;
    try {
      const answer = await ptth.api("POST", "/api/v1/chirp/follow", {query: {node: id}});
      input.value = "";
      status("follow-status", "Following " + id.slice(0, 10) + ".", false);
      showFollowing(answer.following);
      openTimeline();
    } catch (error) {
      if (!(error instanceof ptth.Unauthorized)) status("follow-status", error.message, true);
    }
  }

  async function unfollow(id) {
    try {
      const answer = await ptth.api("POST", "/api/v1/chirp/unfollow", {query: {node: id}});
      status("follow-status", "Unfollowed " + id.slice(0, 10) + ".", false);
      showFollowing(answer.following);
      openTimeline();
    } catch (error) {
      if (!(error instanceof ptth.Unauthorized)) status("follow-status", error.message, true);
    }
  }

  // -- posting ------------------------------------------------------------------------

  async function post(event) {
    event.preventDefault();
    const box = document.getElementById("post-text");
    const text = box.value;
    if (!text.trim()) {
      status("post-status", "Write something first.", true);
      return;
    }
    const button = document.getElementById("post-button");
    button.disabled = true;
    try {
      const answer = await ptth.api("POST", "/api/v1/chirp/post",
        {body: text, type: "text/plain; charset=utf-8"});
      box.value = "";
      updateLength();
      const hops = answer.next_hops.length;
      status("post-status", "Posted " + answer.id.slice(0, 12) + ": on its way to " + hops +
        (hops === 1 ? " neighbour" : " neighbours") + " toward your followers.", false);
      document.getElementById("mine-card").hidden = false;
      document.getElementById("mine").prepend(postItem(
        {author: me, id: answer.id, text, ts: Date.now()}));
    } catch (error) {
      if (!(error instanceof ptth.Unauthorized)) status("post-status", error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  function updateLength() {
    const length = document.getElementById("post-text").value.length;
    const counter = document.getElementById("post-length");
    counter.textContent = length + " / " + MAX_LENGTH;
    counter.classList.toggle("problem", length > MAX_LENGTH);
  }

  // -- start --------------------------------------------------------------------------

  async function start() {
    try {
      const overview = await ptth.api("GET", "/api/v1/overview");
      me = overview.node;
      names = new Map(overview.neighbours.rows.filter((n) => n.name).map((n) => [n.node, n.name]));
      ptth.setText("me-name", overview.name || "unnamed node");
      ptth.setText("me-id", me);
      ptth.setText("me-topic", "~" + me + ".chirp");
      document.title = "ptth · chirp · " + (overview.name || me.slice(0, 10));
      const answer = await ptth.api("GET", "/api/v1/chirp/following");
      showFollowing(answer.following);
      openTimeline();
    } catch (error) {
      if (error instanceof ptth.Unauthorized) return;
      ptth.connection("off", "cannot reach the node");
      status("post-status", error.message, true);
      setTimeout(start, 3000);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("post-form").addEventListener("submit", post);
    document.getElementById("follow-form").addEventListener("submit", follow);
    const box = document.getElementById("post-text");
    box.addEventListener("input", updateLength);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        document.getElementById("post-form").requestSubmit();
      }
    });
    ptth.withToken(start);
  });
})();
