"""The page that shows one text from every side (lens.Inspection.html(), `python gpt2.py "..." --html FILE`).

One self-contained HTML file, no network: the data as JSON in the page, drawn by a short script.
- The text, each token coloured by its rank as GLTR does (top 10, 100, 1000, beyond); hover over a token for
  its probability and rank, click it for the likeliest tokens at its place.
- Attention: the pattern of a chosen layer and head as a heatmap, one pixel per (query, key) scaled up; white
  is 0, blue is 1, and the keys a query may not see (above the diagonal) are left empty.
- The logit lens: layers down, positions across, each cell the top token read from that residual stream and its
  probability; a checkbox adds the streams after each attention.
The patterns travel as bytes (weight * 255, rounded), the lower triangle only: a page holds about
n_layer * n_head * n_seq**2 / 2 * 4/3 bytes of them (base64): 100 MB for 124M at 1024 tokens, 0.25 MB at 50.
"""
import base64
import html
import json
import os
import re
from pathlib import Path

import numpy as np


def page(seen):
    """The page of a lens.Inspection, as a string."""
    n_layer, n_head, n_seq, _ = seen.patterns.shape
    below = np.tril(np.ones((n_seq, n_seq), dtype=bool))
    weights = np.round(seen.patterns[:, :, below] * 255).astype(np.uint8)  # [n_layer, n_head, n_seq * (n_seq + 1) / 2]
    view, lens = seen.view, seen.lens
    shown = {*view.top_ids.ravel().tolist(), *lens.top.ravel().tolist(), *lens.predicted.tolist()}  # the tokens it names
    data = {
        "tokens": seen.tokens,
        "prepend_eot": seen.prepend_eot,
        "vocab": {i: seen.token_text(i) for i in sorted(shown)},
        "view": {"prob": figures(view.prob), "rank": view.rank.tolist(), "entropy": figures(view.entropy),
                 "top_ids": view.top_ids.tolist(), "top_probs": figures(view.top_probs)},
        "lens": {"rows": [row_label(name) for name in lens.names], "mid": [name.endswith("mid") for name in lens.names],
                 "top": lens.top.tolist(), "top_prob": figures(lens.top_prob), "predicted": lens.predicted.tolist(),
                 "prob": figures(lens.prob), "rank": lens.rank.tolist(), "kl": figures(lens.kl)},
        "n_layer": n_layer, "n_head": n_head, "n_seq": n_seq,
        "patterns": base64.b64encode(weights.tobytes()).decode("ascii"),
    }
    # "<" escaped, so that no token (say "</script>") can end the script element early
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = html.escape(f"Inside GPT-2: {shorten(seen.text)}")
    parts = {"title": title, "data": payload, "script": SCRIPT}
    return re.sub(r"\{(title|data|script)\}", lambda m: parts[m[1]], TEMPLATE)  # one pass: no part is read twice


def figures(a, digits=4):  # an array -> nested lists of floats with `digits` significant digits, for a smaller page
    return np.vectorize(lambda x: float(f"{x:.{digits}g}"), otypes=[object])(a).tolist() if np.size(a) else a.tolist()


def row_label(name):
    """blocks.0.hook_resid_pre -> "embed"; blocks.3.hook_resid_mid -> "3 attn"; blocks.3.hook_resid_post -> "3"."""
    layer = name.split(".")[1]
    return "embed" if name.endswith("pre") else f"{layer} attn" if name.endswith("mid") else layer


def shorten(text, n=60):
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def inline(page_html):
    """The page in a frame of its own, for a notebook: its script and styles cannot touch the notebook's."""
    return f'<iframe srcdoc="{html.escape(page_html, quote=True)}" style="width: 100%; height: 720px; border: 0"></iframe>'


def check_writable(path):
    """A ValueError saying why the page cannot be written to `path`, before any work is done."""
    path = Path(path)
    if path.is_dir():  # Path("") is "."
        raise ValueError(f"cannot write the page to {str(path)!r}: give a file name, such as page.html")
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist: create it first"
        raise ValueError(f"cannot write the page to {path}: {path.parent} {problem}")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write the page to {path}: permission denied: choose another path")


def write(path, text):
    """Write the page whole or not at all: into a temporary file beside it, then renamed."""
    check_writable(path)
    path = Path(path)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        part.write_text(text, encoding="utf-8")
        os.replace(part, path)
    except OSError as e:
        raise ValueError(f"cannot write the page to {path}: {e.strerror or e}: choose another path") from None
    finally:  # after an error or Ctrl-C, no part is left behind; after the rename there is none
        part.unlink(missing_ok=True)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>window.pageErrors = [];  // read by the tests; shown on the page as well
window.addEventListener("error", e => { window.pageErrors.push(String(e.message));
  const box = document.getElementById("errors"); if (box) { box.hidden = false; box.textContent = window.pageErrors.join("\\n"); } });</script>
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222 }
h1 { font-size: 1.3em } h2 { font-size: 1.1em; margin-top: 1.6em } .note { color: #666; font-size: .9em }
#text { white-space: pre-wrap; font-family: ui-monospace, monospace; line-height: 1.9 }
.tok { cursor: pointer; border-radius: 3px; padding: 1px 0 } .tok.picked { outline: 2px solid #333 }
.r10 { background: #b7f0b1 } .r100 { background: #fff3a0 } .r1000 { background: #ffc2b3 } .rmore { background: #e0c4ff }
.context { color: #888; background: #eee } .key { display: inline-block; padding: 0 .5em; margin-right: .4em }
#details { min-height: 5em; margin-top: .8em; font-size: .95em } #details td { padding: 0 .8em 0 0 }
#heatmap { width: min(560px, 90vw); aspect-ratio: 1; image-rendering: pixelated; border: 1px solid #999;
  background: repeating-linear-gradient(45deg, #fafafa 0 6px, #eee 6px 12px) }
#lens-wrap { overflow-x: auto } #lens { border-collapse: collapse; font-size: .8em; font-family: ui-monospace, monospace }
#lens td, #lens th { border: 1px solid #ddd; padding: 1px 4px; white-space: pre; text-align: left }
#lens td.hit { font-weight: bold } #errors { color: #a00; white-space: pre-wrap }
</style></head><body>
<h1>{title}</h1><div id="errors" hidden></div>
<h2>Each token: how likely was it?</h2>
<p class="note"><span class="key r10">top 10</span><span class="key r100">top 100</span><span class="key r1000">top 1000</span>
<span class="key rmore">beyond</span> the token's rank among the model's predictions at its place. Hover for figures, click for the alternatives.</p>
<div id="text"></div><div id="details"></div>
<h2>Attention</h2>
<p>Layer <select id="layer"></select> Head <select id="head"></select>
<span class="note">rows: the token attending (query); columns: the tokens it reads (keys); blue is more weight.</span></p>
<canvas id="heatmap"></canvas><div id="cell" class="note">&nbsp;</div>
<h2>Logit lens: what each layer would predict next</h2>
<p><label><input type="checkbox" id="sublayers"> after each attention too</label>
<span class="note">each cell: the top next token read from that residual stream, and its probability; bold where it is the final prediction.</span></p>
<div id="lens-wrap"><table id="lens"></table></div>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body></html>
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const pct = p => p >= 0.001 ? (100 * p).toFixed(1) + "%" : p.toExponential(1);
const bucket = r => r <= 10 ? "r10" : r <= 100 ? "r100" : r <= 1000 ? "r1000" : "rmore";

function showTokens() {  // one span per token; token i > 0 is scored as view entry i - 1
  D.tokens.forEach((t, i) => {
    const span = el("span", t, "tok " + (i === 0 ? "context" : bucket(D.view.rank[i - 1])));
    span.dataset.i = i;
    span.title = i === 0 ? (D.prepend_eot ? "context: put before the text" : "the first token has no context")
      : `probability ${pct(D.view.prob[i - 1])}, rank ${D.view.rank[i - 1]}, entropy ${D.view.entropy[i - 1]} nats`;
    span.addEventListener("click", () => showDetails(i, span));
    $("text").append(span);
  });
}

function showDetails(i, span) {
  document.querySelectorAll(".tok.picked").forEach(s => s.classList.remove("picked"));
  span.classList.add("picked");
  const box = $("details"); box.replaceChildren();
  if (i === 0) { box.append(el("p", "Position 0 has no tokens before it, so nothing predicts it.")); return; }
  const v = i - 1;
  box.append(el("p", `position ${i}: ${JSON.stringify(D.tokens[i])} had probability ${pct(D.view.prob[v])}, rank ${D.view.rank[v]}; the likeliest tokens here were:`));
  const table = el("table"); table.id = "alternatives";
  D.view.top_ids[v].forEach((id, j) => {
    const row = el("tr"); row.append(el("td", JSON.stringify(D.vocab[id])), el("td", pct(D.view.top_probs[v][j]))); table.append(row);
  });
  box.append(table);
}

const weights = Uint8Array.from(atob(D.patterns), c => c.charCodeAt(0));
function drawHeatmap() {  // query q, key k at pixel (x = k, y = q); only k <= q exist
  const n = D.n_seq, layer = +$("layer").value, head = +$("head").value, canvas = $("heatmap");
  canvas.width = canvas.height = n;
  const image = canvas.getContext("2d").createImageData(n, n);
  let at = (layer * D.n_head + head) * n * (n + 1) / 2;
  for (let q = 0; q < n; q++) for (let k = 0; k <= q; k++) {
    const w = weights[at++], p = 4 * (q * n + k);
    image.data[p] = image.data[p + 1] = 255 - w; image.data[p + 2] = 255; image.data[p + 3] = 255;
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function showCell(event) {
  const canvas = $("heatmap"), n = D.n_seq, box = canvas.getBoundingClientRect();
  const k = Math.floor((event.clientX - box.left) / box.width * n), q = Math.floor((event.clientY - box.top) / box.height * n);
  if (q < 0 || k < 0 || q >= n || k >= n) return;
  const w = k > q ? "may not look ahead" : `weight ${(weights[(+$("layer").value * D.n_head + +$("head").value) * n * (n + 1) / 2 + q * (q + 1) / 2 + k] / 255).toFixed(2)}`;
  $("cell").textContent = `${JSON.stringify(D.tokens[q])} (${q}) reading ${JSON.stringify(D.tokens[k])} (${k}): ${w}`;
}

function showLens() {
  const table = $("lens"), withMid = $("sublayers").checked, L = D.lens;
  table.replaceChildren();
  const head = el("tr"); head.append(el("th", "after \\ token"));
  D.tokens.forEach(t => head.append(el("th", JSON.stringify(t))));
  table.append(head);
  L.rows.forEach((label, r) => {
    if (L.mid[r] && !withMid) return;
    const row = el("tr"); row.append(el("th", label));
    L.top[r].forEach((id, i) => {
      const cell = el("td", `${JSON.stringify(D.vocab[id])} ${pct(L.top_prob[r][i])}`, id === L.predicted[i] ? "hit" : "");
      cell.style.background = `rgba(70, 110, 220, ${(0.6 * L.top_prob[r][i]).toFixed(3)})`;
      cell.title = `final prediction ${JSON.stringify(D.vocab[L.predicted[i]])}: probability ${pct(L.prob[r][i])}, rank ${L.rank[r][i]}; KL to the final ${L.kl[r][i]} nats`;
      row.append(cell);
    });
    table.append(row);
  });
}

for (let i = 0; i < D.n_layer; i++) $("layer").append(new Option(i, i));
for (let i = 0; i < D.n_head; i++) $("head").append(new Option(i, i));
$("layer").addEventListener("change", drawHeatmap);
$("head").addEventListener("change", drawHeatmap);
$("heatmap").addEventListener("mousemove", showCell);
$("sublayers").addEventListener("change", showLens);
showTokens(); drawHeatmap(); showLens();
document.body.dataset.ready = "yes";
"""
