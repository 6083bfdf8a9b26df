// Conversions from the chat: pick a file, pick a target, watch the job's progress bar live over
// /ws/jobs/<id>/, then download the result (and see a preview of images).
import { el } from "./text.js";

const IMAGE_TARGETS = new Set(["png", "jpeg", "webp", "gif"]);
const EXTENSIONS = {
  png: "png", jpg: "jpeg", jpeg: "jpeg", webp: "webp", gif: "gif", bmp: "bmp", tif: "tiff",
  tiff: "tiff", pdf: "pdf", csv: "csv", xlsx: "xlsx", md: "md", markdown: "md", txt: "md",
};

function cookie(name) {
  const match = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith(`${name}=`));
  return match ? decodeURIComponent(match.slice(name.length + 1)) : "";
}

let formats = null;

export async function targetsFor(file) {
  if (!formats) {
    const response = await fetch("/api/conversions/formats", { credentials: "same-origin" });
    formats = (await response.json()).conversions;
  }
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  const source = EXTENSIONS[ext];
  // The server sniffs the real format from the content; the extension only narrows the menu.
  if (source && formats[source]) return formats[source];
  return [...new Set(Object.values(formats).flat())].sort();
}

export async function startConversion(file, target, room) {
  const body = new FormData();
  body.append("file", file);
  body.append("target", target);
  if (room) body.append("room", room);
  const response = await fetch("/api/conversions", {
    method: "POST",
    body,
    credentials: "same-origin",
    headers: { "X-CSRFToken": cookie("csrftoken"), Accept: "application/json" },
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `upload failed (HTTP ${response.status})`);
  return data;
}

// A job card: progress bar, stage, then a download link and an image preview; it follows the job
// over its socket and reconnects (the server sends the current state on every connect).
export function showJob(list, job, filename) {
  const item = el("li", { class: "job", dataset: { jobId: job.id, state: job.state } });
  const title = el("div", { class: "job-title" });
  title.append(el("span", {}, `${filename} → ${job.target}`), el("span", { class: "job-stage" }, job.stage));
  const bar = el("progress", { max: "100", value: String(job.progress), "aria-label": `Converting ${filename}` });
  const actions = el("div", { class: "job-actions" });
  const cancel = el("button", { type: "button", class: "link-button", dataset: { testid: "job-cancel" } }, "Cancel");
  actions.append(cancel);
  item.append(title, bar, actions);
  list.append(item);

  let socket = null;
  let finished = false;
  const render = (data) => {
    if (Number(data.progress) < Number(bar.value) && !["failed", "cancelled"].includes(data.state)) return;
    item.dataset.state = data.state;
    bar.value = data.progress;
    title.querySelector(".job-stage").textContent =
      data.state === "failed" ? `failed: ${data.error}` : data.state === "done" ? "done" : data.stage || data.state;
    if (["done", "failed", "cancelled"].includes(data.state)) {
      finished = true;
      cancel.remove();
      if (socket) socket.close();
      if (data.state === "done" && data.result_url) {
        const link = el("a", { href: data.result_url, download: "", dataset: { testid: "job-download" } }, "Download");
        actions.append(link);
        if (IMAGE_TARGETS.has(job.target) && !job.room) {
          // With a room, the outcome message in the chat shows the preview.
          const img = el("img", { src: data.result_url, alt: `${filename} as ${job.target}`, class: "preview",
            dataset: { testid: "job-preview" } });
          item.append(img);
        }
      }
      const dismiss = el("button", { type: "button", class: "link-button" }, "Dismiss");
      dismiss.addEventListener("click", () => item.remove());
      actions.append(dismiss);
    }
  };
  cancel.addEventListener("click", async () => {
    await fetch(`/api/conversions/${job.id}/cancel`, {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": cookie("csrftoken") },
    });
  });
  let attempt = 0;
  const connect = () => {
    if (finished) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/ws/jobs/${job.id}/`);
    socket.onopen = () => { attempt = 0; };
    socket.onmessage = (event) => render(JSON.parse(event.data));
    socket.onclose = () => {
      if (finished) return;
      attempt += 1;
      const base = Math.min(15000, 500 * 2 ** attempt);
      setTimeout(connect, base / 2 + Math.random() * base);
    };
  };
  render(job);
  connect();
  return item;
}
