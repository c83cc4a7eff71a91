// drn-moments search page: plain JavaScript against the service's JSON API (no build step, no CDN).
"use strict";

// Every URL is relative to the page, so the app also works under a route prefix (e.g. /moments/).
const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);

const state = {
  results: [],        // the rows of the last search (the fields of `jobs.search --json`)
  durations: {},      // video_id -> duration_s, from /api/videos
  playing: null,      // the moment in the player: {video_id, start_s, end_s, ...}
  searches: 0,        // searches answered so far (document.body.dataset.searches, for tests and tools)
};

function api(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return BASE + path + (text ? "?" + text : "");
}

// ------------------------------------------------------------------ the access token
// With a token configured, the sign-in page (the service's 401 answer to this page) keeps the token in this tab's
// sessionStorage and the service sets a session cookie; fetch calls send the token as a header, <video> and <img>
// rely on the cookie. A 401 means the session ended or the token changed: reload, and the sign-in page takes over.
const TOKEN_KEY = "drn-moments-token";
const SIGNED_IN_AGAIN = "drn-moments-signed-in-again";

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? {Authorization: `Bearer ${token}`} : {};
}

function signInAgain() {
  sessionStorage.removeItem(TOKEN_KEY);  // a token the service refuses is of no further use
  location.reload();
}

async function signOut() {
  await fetch(BASE + "api/logout", {method: "POST", headers: authHeaders(), credentials: "same-origin"});
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

async function getJson(path, params) {
  const response = await fetch(api(path, params), {headers: authHeaders(), credentials: "same-origin"});
  if (response.status === 401) signInAgain();
  let body = null;
  try { body = await response.json(); } catch (error) { body = {error: `${response.status} ${response.statusText}`}; }
  if (!response.ok) {
    const error = new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function say(text, isError) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("error", Boolean(isError));
}

const seconds = (value) => `${Number(value).toFixed(2)} s`;
const score = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(3));

// ------------------------------------------------------------------ health and the video list
async function watchHealth() {
  const badge = $("status");
  try {
    const health = await getJson("api/health");
    $("sign-out").hidden = !health.token_required;
    badge.textContent = `ready · ${health.rows} segments · ${health.videos ?? 0} videos`;
    badge.className = "status ready";
    badge.dataset.ready = "true";
    await loadVideos();
  } catch (error) {
    badge.textContent = `not ready: ${error.message}`;
    badge.className = "status not-ready";
    badge.dataset.ready = "false";
    setTimeout(watchHealth, 3000);
  }
}

async function loadVideos() {
  const listing = await getJson("api/videos");
  const select = $("video");
  for (const video of listing.videos) {
    state.durations[video.video_id] = video.duration_s;
    const option = document.createElement("option");
    option.value = video.video_id;
    option.textContent = `${video.video_id} (${Math.round(video.duration_s)} s)`;
    select.append(option);
  }
  const wanted = new URLSearchParams(location.search).get("video");
  if (wanted) select.value = wanted;
}

// ------------------------------------------------------------------ search
async function search(event) {
  if (event) event.preventDefault();
  const params = {
    q: $("q").value.trim(),
    k: $("k").value,
    video: $("video").value,
    min_score: $("min-score").value,
  };
  if (!params.q) { say("Type what you are looking for.", true); return; }
  history.replaceState(null, "", BASE + "?" + new URLSearchParams(
    Object.entries(params).filter(([, value]) => value !== "")).toString());
  say("Searching…");
  try {
    const answer = await getJson("api/search", params);
    state.results = answer.results;
    const notes = [...(answer.notices || []), ...Object.values(answer.metadata || {})].filter(Boolean);
    say(answer.count ? notes.join(" ") : ["No moments found.", ...notes].join(" "));
    renderResults();
    renderTimelines();
  } catch (error) {
    state.results = [];
    renderResults();
    renderTimelines();
    say(error.message, true);
  }
  document.body.dataset.searches = String(++state.searches);
}

function renderResults() {
  const list = $("results");
  list.replaceChildren();
  $("results-title").hidden = state.results.length === 0;
  const template = $("result-template");
  state.results.forEach((row, position) => {
    const item = template.content.firstElementChild.cloneNode(true);
    item.dataset.index = String(position);
    item.dataset.video = row.video_id;
    item.dataset.start = String(row.start_s);
    item.dataset.end = String(row.end_s);
    item.querySelector(".rank").textContent = `${position + 1}.`;
    item.querySelector(".query").textContent = row.query_text;
    if (row.query_match === "other") {  // another sentence's moments: never shown as the answer without a mark
      item.classList.add("other-query");
      item.querySelector(".query").textContent =
        `another query: "${row.matched_query ?? row.query_text}" (similarity ${score(row.query_similarity)})`;
    }
    item.querySelector(".score").textContent = `score ${score(row.score)}`;
    item.querySelector(".video-id").textContent = row.video_id;
    item.querySelector(".span").textContent = `${seconds(row.start_s)} – ${seconds(row.end_s)}`;
    const times = [row.start_s, (row.start_s + row.end_s) / 2, row.end_s];
    item.querySelectorAll(".thumbs img").forEach((img, which) => {
      img.src = api("api/frames", {video: row.video_id, t: times[which].toFixed(3), width: 160});
      img.alt = `${row.video_id} at ${seconds(times[which])}`;
    });
    item.addEventListener("click", () => play(row));
    item.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") play(row); });
    list.append(item);
  });
}

// ------------------------------------------------------------------ timelines
function durationOf(videoId, rows) {
  const known = state.durations[videoId];
  if (known) return known;
  return Math.max(1, ...rows.map((row) => row.end_s));
}

const LANE_PX = 18;
const MAX_LANES = 6;

function lanesOf(rows) {  // overlapping moments go on separate lanes (the first lane that is free by then)
  const ends = [];
  return rows.map((row) => {
    let lane = ends.findIndex((end) => end <= row.start_s);
    if (lane < 0) lane = ends.length < MAX_LANES ? ends.length : ends.indexOf(Math.min(...ends));
    ends[lane] = Math.max(ends[lane] ?? 0, row.end_s);
    return lane;
  });
}

function drawTimeline(bar, rows, duration, onPick) {
  bar.replaceChildren();
  const ordered = [...rows].sort((a, b) => a.start_s - b.start_s || b.score - a.score);
  const lanes = lanesOf(ordered);
  bar.style.height = `${Math.max(1, ...lanes.map((lane) => lane + 1)) * LANE_PX + 4}px`;
  const best = Math.max(...rows.map((row) => row.score ?? 0), 1e-9);
  ordered.forEach((row, position) => {
    const block = document.createElement("div");
    block.className = "moment";
    block.style.left = `${(100 * row.start_s) / duration}%`;
    block.style.width = `${(100 * Math.max(0, row.end_s - row.start_s)) / duration}%`;
    block.style.top = `${2 + lanes[position] * LANE_PX}px`;
    block.style.height = `${LANE_PX - 2}px`;
    block.style.opacity = String(0.3 + 0.7 * Math.max(0, (row.score ?? 0) / best));
    block.textContent = score(row.score);
    block.title = `${row.query_text}\n${seconds(row.start_s)} – ${seconds(row.end_s)}, score ${score(row.score)}`;
    block.dataset.start = String(row.start_s);
    block.dataset.end = String(row.end_s);
    block.addEventListener("click", (event) => { event.stopPropagation(); onPick(row); });
    bar.append(block);
  });
  const head = document.createElement("div");
  head.className = "playhead";
  head.hidden = true;
  bar.append(head);
  bar.dataset.duration = String(duration);
}

function renderTimelines() {
  const box = $("timelines");
  box.replaceChildren();
  const byVideo = new Map();
  for (const row of state.results) {
    if (!byVideo.has(row.video_id)) byVideo.set(row.video_id, []);
    byVideo.get(row.video_id).push(row);
  }
  $("timelines-section").hidden = byVideo.size === 0;
  for (const [videoId, rows] of byVideo) {
    const line = document.createElement("div");
    line.className = "timeline-row";
    const label = document.createElement("span");
    label.className = "timeline-label";
    label.textContent = videoId;
    label.title = videoId;
    const bar = document.createElement("div");
    bar.className = "timeline";
    bar.dataset.video = videoId;
    drawTimeline(bar, rows, durationOf(videoId, rows), play);
    line.append(label, bar);
    box.append(line);
  }
  markPlaying();
}

async function loadVideoTimeline(videoId) {
  const bar = $("video-timeline");
  const note = $("video-timeline-note");
  try {
    const info = await getJson(`api/videos/${encodeURIComponent(videoId)}`, {limit: 50});
    if (state.playing && state.playing.video_id !== videoId) return;  // the user moved on meanwhile
    state.durations[videoId] = info.duration_s;
    drawTimeline(bar, info.moments, info.duration_s || durationOf(videoId, info.moments), play);
    bar.dataset.video = videoId;
    note.textContent = `${info.count} of ${info.moments_total} moments stored for ${videoId} ` +
      `(${seconds(info.duration_s)}), best scores shown.`;
    markPlaying();
  } catch (error) {
    note.textContent = error.message;
  }
}

// ------------------------------------------------------------------ the player
const player = () => $("player");

function play(row) {
  const video = player();
  const changed = !state.playing || state.playing.video_id !== row.video_id;
  state.playing = row;
  $("player-panel").hidden = false;
  video.dataset.start = String(row.start_s);
  video.dataset.end = String(row.end_s);
  video.dataset.video = row.video_id;
  $("now-playing").textContent =
    `“${row.query_text}” in ${row.video_id}, ${seconds(row.start_s)} – ${seconds(row.end_s)} (score ${score(row.score)})`;
  $("clip-link").href = api("api/clip", {video: row.video_id, start: row.start_s.toFixed(3), end: row.end_s.toFixed(3)});
  const seek = () => {
    video.currentTime = row.start_s;
    video.play().catch(() => {});  // autoplay may be refused; the user presses play then
  };
  if (changed) {
    video.src = api("api/clip", {video: row.video_id});
    video.addEventListener("loadedmetadata", seek, {once: true});
    loadVideoTimeline(row.video_id);
  } else if (video.readyState >= 1) {
    seek();
  } else {
    video.addEventListener("loadedmetadata", seek, {once: true});
  }
  markPlaying();
}

function keepInMoment() {
  const video = player();
  const row = state.playing;
  if (row && !video.paused && $("loop").checked && video.currentTime >= row.end_s) {
    video.currentTime = row.start_s;
  }
  movePlayheads();
}

function movePlayheads() {
  const video = player();
  for (const bar of document.querySelectorAll(".timeline")) {
    const head = bar.querySelector(".playhead");
    if (!head) continue;
    const mine = state.playing && bar.dataset.video === state.playing.video_id;
    head.hidden = !mine;
    if (mine) head.style.left = `${(100 * video.currentTime) / Number(bar.dataset.duration || 1)}%`;
  }
}

function markPlaying() {
  const row = state.playing;
  const same = (element) => row && element.dataset.start === String(row.start_s) &&
    element.dataset.end === String(row.end_s);
  for (const item of document.querySelectorAll(".result")) {
    item.classList.toggle("playing", Boolean(same(item) && item.dataset.video === row.video_id));
  }
  for (const block of document.querySelectorAll(".timeline .moment")) {
    const bar = block.closest(".timeline");
    block.classList.toggle("playing", Boolean(same(block) && bar.dataset.video === row.video_id));
  }
}

function tick() {  // timeupdate fires only about 4 times a second: check the loop on every frame too
  keepInMoment();
  requestAnimationFrame(tick);
}

// ------------------------------------------------------------------ start
function start() {
  sessionStorage.removeItem(SIGNED_IN_AGAIN);  // signed in: the sign-in page may use the kept token again later
  $("sign-out").addEventListener("click", signOut);
  $("search").addEventListener("submit", search);
  player().addEventListener("timeupdate", keepInMoment);
  const query = new URLSearchParams(location.search);
  if (query.get("q")) $("q").value = query.get("q");
  if (query.get("min_score")) $("min-score").value = query.get("min_score");
  if (query.get("k")) $("k").value = query.get("k");
  requestAnimationFrame(tick);
  watchHealth().then(() => { if ($("q").value.trim()) search(); });
}

start();
