"""``serve``: a small search page on localhost (Python's http.server, no other packages).

Routes: ``GET /`` the page; ``GET /api/items?offset=&limit=`` catalog items (for the reference
chooser); ``GET|POST /api/query`` (JSON body or query string: ``text``, optional ``reference``
(an item id), ``top_k``, ``backend``) -> the search's JSON, or ``{"error"}`` with status 400;
``GET /thumb/<row>`` the thumbnail of an index row (only catalog images are ever read)."""
import json
import threading
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from mmf_fashionvil.tools.search.index import SearchError
from mmf_fashionvil.tools.search.query import run_query
from mmf_fashionvil.tools.search.render import STYLE, thumbnail_bytes

MAX_CHOOSER_ITEMS = 2000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>FashionViL search</title><style>__STYLE__
form { display: flex; flex-wrap: wrap; gap: .6em; align-items: center; margin-bottom: 1em; }
#text { width: 28em; padding: .4em; } #reference { max-width: 26em; }
#preview { height: 72px; display: none; border: 1px solid #ccc; }
.use { font-size: 11px; margin-top: 4px; } #status { min-height: 1.4em; color: #555; }
#status.error { color: #b00; }
</style></head><body>
<h2>FashionViL search <small style="color:#777">(__COUNT__ items)</small></h2>
<form id="form">
  <input id="text" placeholder="describe it, or how to change the reference" autofocus>
  <select id="reference"><option value="">(no reference image: text search)</option></select>
  <img id="preview" alt="reference">
  <label>top <input id="top-k" type="number" value="10" min="1" style="width:4em"></label>
  <button id="search" type="submit">Search</button>
</form>
<div id="status"></div>
<div class="grid" id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;",
  ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const thumbs = {};
function addOption(item) {
  thumbs[item.id] = item.thumbnail;
  const option = document.createElement("option");
  option.value = item.id;
  option.textContent = item.id + (item.caption ? " \\u2014 " + item.caption.slice(0, 60) : "");
  $("reference").appendChild(option);
}
function showPreview() {
  const id = $("reference").value;
  $("preview").style.display = id ? "inline" : "none";
  if (id) $("preview").src = thumbs[id];
}
function useReference(id, thumbnail) {
  if (!(id in thumbs)) addOption({id: id, thumbnail: thumbnail});
  $("reference").value = id; showPreview(); $("text").focus();
}
fetch("api/items?limit=__MAX__").then((r) => r.json()).then((d) => d.items.forEach(addOption));
$("reference").addEventListener("change", showPreview);
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const results = $("results");
  results.dataset.state = "busy";
  $("status").className = ""; $("status").textContent = "searching...";
  const body = {text: $("text").value, reference: $("reference").value || null,
                top_k: parseInt($("top-k").value || "10", 10)};
  try {
    const response = await fetch("api/query", {method: "POST", body: JSON.stringify(body),
                                                headers: {"Content-Type": "application/json"}});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    results.innerHTML = answer.results.map((r) =>
      `<div class="result" data-id="${esc(r.id)}">` +
      `<img src="${esc(r.thumbnail)}" alt="${esc(r.id)}">` +
      `<div><span class="rank">#${r.rank}</span> <span class="id">${esc(r.id)}</span>` +
      (r.category ? ` &middot; ${esc(r.category)}` : "") + `</div>` +
      `<div class="score">score ${r.score.toFixed(4)}</div>` +
      `<div class="caption">${esc(r.caption)}</div>` +
      `<button class="use" type="button" data-id="${esc(r.id)}" data-thumb="${esc(r.thumbnail)}">` +
      `use as reference</button></div>`).join("");
    results.querySelectorAll("button.use").forEach((b) => b.addEventListener("click",
      () => useReference(b.dataset.id, b.dataset.thumb)));
    $("status").textContent = answer.results.length + " results" +
      (answer.note ? " \\u2014 " + answer.note : "");
    results.dataset.state = "done";
  } catch (error) {
    results.innerHTML = ""; results.dataset.state = "error";
    $("status").className = "error"; $("status").textContent = "error: " + error.message;
  }
});
</script></body></html>
"""


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, api, index, backend="exact"):
        super().__init__(address, SearchHandler)
        self.api, self.index, self.backend = api, index, backend
        self.lock = threading.Lock()  # one model call at a time
        self.page = (PAGE.replace("__STYLE__", STYLE).replace("__COUNT__", str(len(index)))
                     .replace("__MAX__", str(MAX_CHOOSER_ITEMS))).encode("utf-8")
        self.thumbnail = lru_cache(maxsize=4096)(
            lambda row: thumbnail_bytes(self.index.items[row]["path"]))


class SearchHandler(BaseHTTPRequestHandler):
    server_version = "FashionViLSearch/1"

    def log_message(self, format, *args):  # quiet: one line per request is noise here
        pass

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if "json" in content_type else "max-age=3600")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, data):
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def do_GET(self):
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/api/items":
            self._items(params)
        elif url.path == "/api/query":
            self._query(params)
        elif url.path.startswith("/thumb/"):
            self._thumbnail(url.path[len("/thumb/"):])
        else:
            self._json(404, {"error": f"no such page: {url.path}"})

    def do_POST(self):
        url = urlparse(self.path)
        if url.path != "/api/query":
            self._json(404, {"error": f"no such endpoint: {url.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            params = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(params, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            self._json(400, {"error": f"the request body is not a JSON object: {e}"})
            return
        self._query(params)

    def _items(self, params):
        index = self.server.index
        try:
            offset = max(0, int(params.get("offset", 0)))
            limit = max(0, min(int(params.get("limit", 100)), MAX_CHOOSER_ITEMS))
        except ValueError:
            self._json(400, {"error": "offset and limit must be integers"})
            return
        items = [{"id": item["id"], "caption": item.get("caption"),
                  "category": item.get("category"), "thumbnail": f"thumb/{row}"}
                 for row, item in enumerate(index.items[offset:offset + limit], offset)]
        self._json(200, {"count": len(index), "offset": offset, "items": items})

    def _query(self, params):
        server = self.server
        reference = params.get("reference") or None
        try:
            if reference is not None:
                # Only catalog items: a page never names a file of this machine.
                if str(reference) not in server.index.row_of:
                    raise SearchError(f"reference {reference!r} is not an item id of the index")
                reference = server.index.items[server.index.row_of[str(reference)]]["path"]
            top_k = int(params.get("top_k") or 10)
            with server.lock:
                answer = run_query(server.api, server.index, str(params.get("text") or ""),
                                   reference=reference, top_k=top_k,
                                   backend=params.get("backend") or server.backend)
        except (SearchError, ValueError, TypeError) as e:
            self._json(400, {"error": str(e)})
            return
        except Exception as e:  # the page shows it; the server keeps serving
            self._json(500, {"error": f"{type(e).__name__}: {e}"})
            return
        for result in answer["results"]:
            result["thumbnail"] = f"thumb/{result['row']}"
            del result["path"]  # the page needs no local paths
        answer["query"].pop("reference", None)
        self._json(200, answer)

    def _thumbnail(self, row):
        if not row.isdecimal() or int(row) >= len(self.server.index):
            self._json(404, {"error": f"no item row {row}"})
            return
        self._send(200, self.server.thumbnail(int(row)), "image/png")


def serve(api, index, host="127.0.0.1", port=8000, backend="exact", announce=print):
    """Serves the page until interrupted (port 0: any free port)."""
    server = SearchServer((host, port), api, index, backend)
    announce(f"serving {len(index)} items of {index.path} on "
             f"http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
