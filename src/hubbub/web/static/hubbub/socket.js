// One room's socket (the hubbub.v1 protocol, docs/protocol.md) that never loses a message:
//  - it remembers the last id it saw and reconnects with ?after=<that id> (catch-up, no gap);
//  - it drops any id it already has (no duplicate);
//  - posts carry a client_id and stay pending until their own MessageEvent comes back; pending
//    posts are resent after every reconnect (the server stores each client_id once);
//  - it reconnects by itself with exponential backoff and jitter, at once when the browser says
//    it is online again, and notices a dead connection (laptop sleep) by a ping without answer.

const REFUSALS = {
  4400: "This room name is not valid.",
  4401: "Sign in to join this room.",
  4403: "This room is private and you are not a member.",
};
const PING_EVERY = 25000;
const PONG_WITHIN = 10000;
const MAX_BACKOFF = 30000;

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export class RoomSocket extends EventTarget {
  constructor(room, lastId) {
    super();
    this.room = room;
    this.lastId = lastId;
    this.pending = new Map(); // client_id -> text, in posting order
    this.inflight = []; // client_ids sent on the current connection, oldest first
    this.attempt = 0;
    this.ws = null;
    this.state = "idle";
    this.stopped = false;
    this.timers = {};
    this.onOnline = () => this.reconnectNow();
    window.addEventListener("online", this.onOnline);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, info) {
    this.state = state;
    this.emit("state", { state, ...info });
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.timers.retry);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/chat/${encodeURIComponent(this.room)}/?after=${this.lastId}`;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt });
    const ws = new WebSocket(url, ["hubbub.v1"]);
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.attempt = 0;
      this.inflight = [];
      this.setState("open");
      for (const [clientId, text] of this.pending) this.sendPost(clientId, text);
      this.heartbeat();
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.alive();
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      this.handle(data);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.stopHeartbeat();
      if (this.stopped) return;
      if (REFUSALS[event.code]) {
        this.stopped = true;
        this.setState("refused", { code: event.code, reason: REFUSALS[event.code] });
        return;
      }
      this.scheduleReconnect();
    };
  }

  handle(data) {
    switch (data.type) {
      case "message": {
        if (data.client_id && this.pending.has(data.client_id)) {
          this.pending.delete(data.client_id);
          this.inflight = this.inflight.filter((id) => id !== data.client_id);
          this.emit("ack", data);
        }
        if (data.id <= this.lastId) return; // already shown
        this.lastId = data.id;
        this.emit("message", data);
        break;
      }
      case "error":
        this.handleError(data);
        break;
      case "presence":
      case "typing":
        this.emit(data.type, data);
        break;
      default:
        break; // pong, history: nothing to show
    }
  }

  handleError(error) {
    // Frames are answered in order: an error about a post is about the oldest one in flight.
    const clientId = this.inflight.shift();
    if (clientId === undefined) {
      this.emit("error", error);
      return;
    }
    if (error.code === "rate_limited" || error.code === "server_error") {
      const wait = Math.max(0.2, Number(error.retry_after) || 1) * 1000;
      setTimeout(() => {
        if (this.pending.has(clientId)) this.sendPost(clientId, this.pending.get(clientId));
      }, wait);
      return;
    }
    this.pending.delete(clientId);
    this.emit("failed", { clientId, error });
  }

  post(text) {
    const clientId = newClientId();
    this.pending.set(clientId, text);
    if (this.state === "open") this.sendPost(clientId, text);
    return clientId;
  }

  sendPost(clientId, text) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.inflight.push(clientId);
    this.ws.send(JSON.stringify({ message: text, client_id: clientId }));
  }

  typing() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send('{"type":"typing"}');
  }

  scheduleReconnect() {
    this.attempt += 1;
    const base = Math.min(MAX_BACKOFF, 500 * 2 ** (this.attempt - 1));
    const delay = Math.round(base / 2 + Math.random() * base); // jitter: 0.5x to 1.5x
    this.setState("reconnecting", { attempt: this.attempt, delay });
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped || this.state === "open") return;
    this.attempt = Math.max(0, this.attempt - 1);
    this.connect();
  }

  heartbeat() {
    this.stopHeartbeat();
    this.timers.ping = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send('{"type":"ping"}');
      clearTimeout(this.timers.pong);
      // No frame at all within PONG_WITHIN: the connection is dead (a suspended laptop, a dropped
      // network); close it and reconnect rather than wait for the browser to notice.
      this.timers.pong = setTimeout(() => this.ws && this.ws.close(4000, "no pong"), PONG_WITHIN);
    }, PING_EVERY);
  }

  alive() {
    clearTimeout(this.timers.pong);
  }

  stopHeartbeat() {
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.pong);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timers.retry);
    this.stopHeartbeat();
    window.removeEventListener("online", this.onOnline);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }
}
