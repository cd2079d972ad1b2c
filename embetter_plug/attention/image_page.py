"""A self-contained HTML view of where a text token looks on the picture (no server, no network).

Each picture is embedded once as a PNG; the grids of every layer and head are inline JSON, and a
little inline JavaScript draws the chosen layer and head as translucent cells over the picture,
in the box the grid covers (see :mod:`embetter_plug.attention.image`). Written on its own page
by :meth:`~embetter_plug.attention.image.ImageAttention.to_html` and as a section of the probe
report (``write_report(..., image_attention=...)``).
"""

from __future__ import annotations

import base64
import html
import io
import json

from .page import _PAGE, DECIMALS

#: pictures are shown at most this many pixels wide (the grid is drawn on top at that scale)
MAX_WIDTH = 360

_SECTION = """<section id="image-attention">
<h2>__HEADING__</h2>
<p id="image-attention-text"></p>
<label>layer <select id="image-attention-layer"></select></label>
<label>head <select id="image-attention-head"></select></label>
<p>the attention of <b id="image-attention-query"></b> to each image token, on the image's
patch grid (brighter: more; a tiled image: its tiles in place, and its overview of the whole
picture); hover a cell for its weight</p>
<div id="image-attention-pictures"></div>
<script type="application/json" id="image-attention-data">__DATA__</script>
<script>
(function(){
const D = JSON.parse(document.getElementById('image-attention-data').textContent);
const sel = id => document.getElementById('image-attention-' + id);
const fill = (id, vs) => { sel(id).innerHTML = vs.map((v, i) =>
  '<option value="' + i + '">' + v + '</option>').join(''); };
fill('layer', D.layers); fill('head', D.heads);
sel('text').textContent = D.text; sel('query').textContent = D.query;
const box = sel('pictures');
D.images.forEach((im, j) => {
  const d = document.createElement('div');
  d.style = 'position:relative;display:inline-block;margin:0 1em 1em 0;overflow:hidden';
  d.innerHTML = '<img src="' + D.pngs[im.picture] + '" width="' + im.width + '"><div ' +
    'class="cells" style="position:absolute;left:0;top:0"></div><div>image ' + im.picture +
    (im.name === 'grid' ? '' : ': ' + im.name) + '</div>';
  box.appendChild(d);
});
function draw() {
  const l = +sel('layer').value, h = +sel('head').value;
  let top = 0;
  D.images.forEach(im => { im.grid[l][h].forEach(r => r.forEach(w => { top = Math.max(top, w); })); });
  box.querySelectorAll('.cells').forEach((cells, j) => {
    const im = D.images[j], g = im.grid[l][h], s = im.scale;
    const [x0, y0, x1, y1] = im.box, cw = (x1 - x0) * s / g[0].length, ch = (y1 - y0) * s / g.length;
    cells.innerHTML = g.map((r, y) => r.map((w, x) => '<div title="' + w.toFixed(4) + '" data-w="' +
      w + '" style="position:absolute;left:' + (x0 * s + x * cw) + 'px;top:' + (y0 * s + y * ch) +
      'px;width:' + cw + 'px;height:' + ch + 'px;background:rgba(255,200,0,' +
      (top > 0 ? 0.85 * w / top : 0) + ')"></div>').join('')).join('');
    cells.setAttribute('data-shown', [D.layers[l], D.heads[h]].join('|'));
  });
}
sel('layer').onchange = draw; sel('head').onchange = draw;
draw();
})();
</script>
</section>"""


def _png(picture) -> tuple[str, float]:
    """``(data URL, scale)`` of a picture shown at most :data:`MAX_WIDTH` pixels wide."""
    from PIL import Image

    img = Image.fromarray(picture)
    scale = min(1.0, MAX_WIDTH / img.width)
    if scale < 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), scale


def image_attention_section(att, *, heading: str = "Attention on the picture") -> str:
    """The view of an ``ImageAttention`` as an HTML section, for a page's body: one panel per
    grid (a tiled image: its tiles' mosaic and its overview), each picture embedded once."""
    pngs, panels = [], []
    overviews = att.overviews or [None] * len(att.grids)
    boxes = att.overview_boxes or [None] * len(att.grids)
    for j, pic in enumerate(att.pictures):
        png, scale = _png(pic)
        pngs.append(png)
        grids = [("grid" if overviews[j] is None else "tiles", att.boxes[j], att.grids[j])]
        if overviews[j] is not None:
            grids.append(("overview", boxes[j], overviews[j]))
        panels += [{"picture": j, "name": name, "scale": scale,
                    "width": round(pic.shape[1] * scale), "box": [float(v) for v in box],
                    "grid": grid.astype(float).round(DECIMALS + 2).tolist()}
                   for name, box, grid in grids]
    data = json.dumps({"text": att.text, "query": str(att.query),
                       "layers": [int(x) for x in att.layers],
                       "heads": [int(x) for x in att.heads], "pngs": pngs, "images": panels})
    return _SECTION.replace("__HEADING__", html.escape(heading)).replace(
        "__DATA__", data.replace("<", "\\u003c"))


def image_attention_page(att, *, title: str | None = None) -> str:
    """A whole page holding :func:`image_attention_section`."""
    title = title or "Attention on the picture"
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__STYLE__", "").replace(
        "__SECTION__", image_attention_section(att, heading=title))
