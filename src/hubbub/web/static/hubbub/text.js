// User text is always inserted as text. URLs become links built with textContent and an
// http(s)-only href, so no markup from a message is ever interpreted.

// Absolute http(s) URLs, and the one same-origin path messages carry: a conversion's result.
const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]}]|\/api\/conversions\/[0-9a-f-]{36}\/result\b/g;

export function renderText(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
    const href = match[0];
    let url;
    try {
      url = new URL(href, location.origin);
    } catch {
      url = null;
    }
    if (url && (url.protocol === "http:" || url.protocol === "https:")) {
      const a = document.createElement("a");
      a.href = url.href;
      a.textContent = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      parent.append(a);
    } else {
      parent.append(document.createTextNode(href));
    }
    last = match.index + href.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}
