// The chat page: sign in (or enter as a guest), pick a room, read and post.
import { api, ApiError } from "./api.js";
import { RoomSocket } from "./socket.js";
import { showJob, startConversion, targetsFor } from "./jobs.js";
import { el, renderText } from "./text.js";

const $ = (id) => document.getElementById(id);
const config = {
  allowGuests: document.body.dataset.allowGuests === "true",
  maxChars: Number(document.body.dataset.maxChars) || 4000,
  initialRoom: document.body.dataset.initialRoom || "",
};
const PAGE = 50;
const TYPING_SHOWN_MS = 4000;
const TYPING_SEND_EVERY_MS = 2500;
const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  refused: "Not allowed",
};

let me = null; // {username, guest}
let rooms = [];
let current = null; // {name, socket, firstId, loadingOlder, noOlder}
const typers = new Map(); // user -> timeout
let lastTypingSent = 0;

// -- views ---------------------------------------------------------------------------------

function show(view) {
  $("auth").hidden = view !== "auth";
  $("sidebar").hidden = view !== "chat";
  $("chat").hidden = view !== "chat";
  $("logout").hidden = view !== "chat" || !me || me.guest;
  $("me").textContent = view === "chat" && me ? `${me.username}${me.guest ? " (guest)" : ""}` : "";
  $("private-label").hidden = !me || me.guest;
}

function setConn(state, detail = {}) {
  const pill = $("conn-state");
  pill.dataset.state = state;
  let text = STATE_TEXT[state] || state;
  if (state === "reconnecting" && detail.delay) text = `Reconnecting in ${Math.ceil(detail.delay / 1000)} s…`;
  if (!navigator.onLine && state !== "open") text = "Offline — messages will be sent when back";
  pill.textContent = text;
}

async function boot() {
  try {
    me = await api("GET", "/api/auth/me");
  } catch (err) {
    me = null;
  }
  if (me && !me.guest) return enterChat();
  $("guest-entry").hidden = !config.allowGuests;
  show("auth");
}

async function enterChat() {
  show("chat");
  await loadRooms();
  openRoom(config.initialRoom || "lobby");
}

// -- auth ----------------------------------------------------------------------------------

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const action = event.submitter?.value === "signup" ? "signup" : "login";
  const body = { username: $("auth-username").value.trim(), password: $("auth-password").value };
  $("auth-error").textContent = "";
  try {
    await api("POST", `/api/auth/${action}`, body);
    me = await api("GET", "/api/auth/me");
    await enterChat();
  } catch (err) {
    $("auth-error").textContent = err instanceof ApiError ? err.message : String(err);
  }
});

$("guest-button").addEventListener("click", async () => {
  me = await api("GET", "/api/auth/me");
  await enterChat();
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/api/auth/logout").catch(() => {});
  location.assign("/");
});

// -- rooms ---------------------------------------------------------------------------------

async function loadRooms() {
  try {
    rooms = (await api("GET", "/api/rooms")).rooms;
  } catch {
    rooms = [];
  }
  renderRooms();
}

function renderRooms() {
  const list = $("room-list");
  list.replaceChildren();
  for (const room of rooms) {
    const button = el("button", { type: "button", class: "room", dataset: { room: room.name } });
    button.append(el("span", { class: "hash" }, room.private ? "🔒" : "#"), el("span", {}, room.name));
    if (current && current.name === room.name) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => {
      openRoom(room.name);
      closeSidebarOnMobile();
    });
    list.append(el("li", {}, undefined));
    list.lastChild.append(button);
  }
}

$("room-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("room-name").value.trim();
  const isPrivate = $("room-private").checked;
  $("room-error").textContent = "";
  if (me && !me.guest) {
    try {
      await api("POST", "/api/rooms", { name, private: isPrivate });
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) {
        $("room-error").textContent = err.message;
        return;
      }
    }
    await loadRooms();
  }
  $("room-name").value = "";
  $("room-private").checked = false;
  openRoom(name);
  closeSidebarOnMobile();
});

$("member-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = $("member-name").value.trim();
  try {
    await api("POST", `/api/rooms/${encodeURIComponent(current.name)}/members`, { username });
    $("member-status").textContent = `${username} can now join.`;
    $("member-name").value = "";
  } catch (err) {
    $("member-status").textContent = err.message;
  }
});

// -- a room --------------------------------------------------------------------------------

async function openRoom(name) {
  if (current) current.socket.close();
  typers.clear();
  $("typing").textContent = "";
  $("messages").replaceChildren();
  $("presence").replaceChildren();
  $("room-notice").hidden = true;
  $("room-title").textContent = name;
  $("composer-input").placeholder = `Message #${name}`;
  const info = rooms.find((r) => r.name === name);
  $("room-private-badge").hidden = !info?.private;
  $("members").hidden = !(info?.private && me && info.owner === me.username);
  $("member-status").textContent = "";
  history.replaceState(null, "", `/r/${encodeURIComponent(name)}/`);
  document.title = `${name} · Hubbub`;

  let page = [];
  try {
    page = (await api("GET", `/api/rooms/${encodeURIComponent(name)}/messages?limit=${PAGE}`)).messages;
  } catch (err) {
    notice(err.status === 403 ? "This room is private and you are not a member." : err.message);
    setConn("refused");
    current = null;
    renderRooms();
    return;
  }
  const lastId = page.length ? page[page.length - 1].id : 0;
  const socket = new RoomSocket(name, lastId);
  current = { name, socket, firstId: page.length ? page[0].id : null, noOlder: page.length < PAGE };
  for (const event of page) appendMessage(event);
  scrollToBottom();
  renderRooms();

  let listed = rooms.some((r) => r.name === name);
  socket.addEventListener("state", (e) => {
    setConn(e.detail.state, e.detail);
    if (e.detail.state === "open" && !listed) {
      listed = true; // a public room is created by its first socket: list it now
      loadRooms();
    }
    if (e.detail.state === "refused") notice(e.detail.reason);
  });
  socket.addEventListener("message", (e) => {
    const near = nearBottom();
    appendMessage(e.detail);
    stopTyping(e.detail.user);
    if (near || e.detail.user === me?.username) scrollToBottom();
  });
  socket.addEventListener("ack", (e) => {
    document.querySelector(`[data-client-id="${CSS.escape(e.detail.client_id)}"]`)?.remove();
  });
  socket.addEventListener("failed", (e) => {
    const item = document.querySelector(`[data-client-id="${CSS.escape(e.detail.clientId)}"]`);
    if (item) {
      item.classList.add("failed");
      item.querySelector(".state").textContent = `not sent: ${e.detail.error.detail}`;
    }
  });
  socket.addEventListener("error", (e) => {
    $("composer-error").textContent = e.detail.detail;
  });
  socket.addEventListener("presence", (e) => renderPresence(e.detail.users));
  socket.addEventListener("typing", (e) => showTyping(e.detail.user));
  socket.connect();
  if (window.matchMedia("(min-width: 48rem)").matches) $("composer-input").focus();
}

function notice(text) {
  $("room-notice").textContent = text;
  $("room-notice").hidden = false;
}

function formatTime(ts) {
  const date = new Date(ts);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageItem(event) {
  const item = el("li", { class: "message", dataset: { id: String(event.id) } });
  if (me && event.user === me.username) item.classList.add("mine");
  const head = el("div", { class: "meta" });
  head.append(
    el("span", { class: "author" }, event.user),
    el("time", { datetime: event.ts, title: new Date(event.ts).toLocaleString() }, formatTime(event.ts)),
  );
  const body = el("div", { class: "text", dataset: { testid: "message-text" } });
  renderText(body, event.message);
  item.append(head, body);
  // A conversion's outcome: preview an image result (only its owner may fetch it; for anyone
  // else the image fails to load and is removed).
  const result = /to (png|jpeg|webp|gif): (\/api\/conversions\/[0-9a-f-]{36}\/result)$/.exec(event.message);
  if (result) {
    const img = el("img", { src: result[2], alt: "converted image", class: "preview", loading: "lazy" });
    img.addEventListener("error", () => img.remove());
    item.append(img);
  }
  return item;
}

function appendMessage(event) {
  const list = $("messages");
  const item = messageItem(event);
  // Keep pending (unacknowledged) posts at the very bottom.
  const firstPending = list.querySelector(".pending");
  list.insertBefore(item, firstPending);
}

function appendPending(clientId, text) {
  const item = el("li", { class: "message mine pending", dataset: { clientId } });
  const head = el("div", { class: "meta" });
  head.append(el("span", { class: "author" }, me?.username || "me"), el("span", { class: "state" }, "sending…"));
  const body = el("div", { class: "text" });
  renderText(body, text);
  item.append(head, body);
  $("messages").append(item);
  scrollToBottom();
}

function nearBottom() {
  const list = $("messages");
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToBottom() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

$("messages").addEventListener("scroll", async () => {
  const room = current;
  if (!room || room.loadingOlder || room.noOlder || $("messages").scrollTop > 40 || !room.firstId) return;
  room.loadingOlder = true;
  try {
    const url = `/api/rooms/${encodeURIComponent(room.name)}/messages?before=${room.firstId}&limit=${PAGE}`;
    const page = (await api("GET", url)).messages;
    if (room !== current) return;
    const list = $("messages");
    const before = list.scrollHeight;
    const first = list.firstChild;
    for (const event of page) list.insertBefore(messageItem(event), first);
    list.scrollTop += list.scrollHeight - before; // keep what the reader was looking at in place
    if (page.length) room.firstId = page[0].id;
    room.noOlder = page.length < PAGE;
  } finally {
    room.loadingOlder = false;
  }
});

function renderPresence(users) {
  const list = $("presence");
  list.replaceChildren();
  for (const user of users) {
    const item = el("li", { title: user }, user);
    if (me && user === me.username) item.classList.add("me");
    list.append(item);
  }
}

function showTyping(user) {
  if (me && user === me.username) return;
  clearTimeout(typers.get(user));
  typers.set(user, setTimeout(() => stopTyping(user), TYPING_SHOWN_MS));
  renderTyping();
}

function stopTyping(user) {
  clearTimeout(typers.get(user));
  if (typers.delete(user)) renderTyping();
}

function renderTyping() {
  const names = [...typers.keys()];
  $("typing").textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

// -- the composer --------------------------------------------------------------------------

const input = $("composer-input");

function send() {
  const text = input.value;
  $("composer-error").textContent = "";
  if (!current || text.trim() === "") return;
  if (text.length > config.maxChars) {
    $("composer-error").textContent = `That is ${text.length} characters; the limit is ${config.maxChars}.`;
    return;
  }
  const clientId = current.socket.post(text);
  lastTypingSent = 0; // the others stop showing us as typing when this arrives; the next keystroke says so again
  appendPending(clientId, text);
  input.value = "";
  autosize();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

input.addEventListener("input", () => {
  autosize();
  const now = Date.now();
  if (current && input.value && now - lastTypingSent > TYPING_SEND_EVERY_MS) {
    lastTypingSent = now;
    current.socket.typing();
  }
});

function autosize() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
}

// -- conversions ---------------------------------------------------------------------------

let chosenFile = null;

$("attach").addEventListener("click", () => $("attach-input").click());

$("attach-input").addEventListener("change", async () => {
  const file = $("attach-input").files[0];
  $("attach-input").value = "";
  if (!file) return;
  chosenFile = file;
  $("composer-error").textContent = "";
  $("convert-file-name").textContent = file.name;
  const select = $("convert-target");
  select.replaceChildren();
  try {
    for (const target of await targetsFor(file)) select.append(el("option", { value: target }, target));
  } catch (err) {
    $("composer-error").textContent = "Cannot list the conversions right now.";
    return;
  }
  $("convert-form").hidden = false;
  select.focus();
});

$("convert-cancel").addEventListener("click", () => {
  chosenFile = null;
  $("convert-form").hidden = true;
});

$("convert-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!chosenFile || !current) return;
  const file = chosenFile;
  const target = $("convert-target").value;
  $("convert-form").hidden = true;
  chosenFile = null;
  try {
    const job = await startConversion(file, target, current.name);
    showJob($("jobs"), job, file.name);
  } catch (err) {
    $("composer-error").textContent = err.message;
  }
});

// -- small screens -------------------------------------------------------------------------

function closeSidebarOnMobile() {
  document.body.classList.remove("rooms-open");
  $("toggle-rooms").setAttribute("aria-expanded", "false");
}

$("toggle-rooms").addEventListener("click", () => {
  const open = document.body.classList.toggle("rooms-open");
  $("toggle-rooms").setAttribute("aria-expanded", String(open));
});

window.addEventListener("offline", () => setConn(current?.socket.state || "idle"));

boot();
