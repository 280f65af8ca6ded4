"""`dckp pick-references`: choose reference keypoints by hand on one frame of a demos or views file (the paper
allows hand-picked references), and write the pixels files that `dckp keypoints --pixels CAMERA=FILE.json` reads.

A click on one camera's image picks the surface point under it; that point is shown, numbered, on every camera
that sees it: it is lifted with the frame's depth and projected into each other camera, where it counts as seen
if it lands inside the image and that camera's depth agrees within `tol` metres (`dckp.geometry.correspondence`:
the occlusion test of the DON's training matches). Each camera's file gets the points it sees, in pick order:
`{"uv": [[u, v], ...]}`, integer pixel coordinates (references are read at the nearest pixel anyway).

With a display, a matplotlib window (left click: add a point, right click or `u`: remove the last one); the files
are rewritten after every change. Headless, one self-contained HTML page (images and the projection tables
inside, no network) whose buttons download each camera's file. Both use the same projection tables, computed
here, so they pick the same pixels.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dckp.config import atomic_write_bytes, option, save_json
from dckp.errors import DckpError
from dckp.viz.view import has_display

MARKER = 14  # matplotlib marker size (points) of a picked point


@dataclass
class PickConfig:
    """Where and how `dckp pick-references` asks for the clicks (docs/view-export.md)."""

    episode: str = option("", "episode of the reference frame ('': the first)")
    frame: int = option(0, "the reference frame's index in that episode")
    mode: str = option("auto", "a matplotlib window, or an HTML page for a machine without a display (auto: "
                               "the window when DISPLAY or WAYLAND_DISPLAY is set)", choices=("auto", "window", "html"))
    tol: float = option(0.01, "metres by which a camera's depth may differ from a picked point for it to count "
                              "as seen there")

    def __post_init__(self):
        if self.frame < 0:
            raise DckpError(f"must be >= 0, got {self.frame}", field="frame")
        if self.mode not in ("auto", "window", "html"):
            raise DckpError(f"must be auto, window or html, got {self.mode!r}", field="mode")
        if not self.tol > 0:
            raise DckpError(f"must be > 0, got {self.tol}", field="tol")


def load_frames(path: str | os.PathLike, episode: str = "", frame: int = 0) -> tuple[str, dict[str, dict]]:
    """The episode's name and `{camera: frame}` (rgb, depth, K, pose) of frame `frame` of every camera."""
    from dckp.data import Dataset

    with Dataset(path) as ds:
        ep = ds.pick_episode(episode or None)
        frames = {}
        for cam in ds.streams(ep):
            n = ds.num_frames(ep, cam)
            if frame >= n:
                raise DckpError(f"no frame {frame} in {ep} (it has {n})", path=str(path), field="--frame")
            frames[cam] = ds.frame(ep, cam, frame)
    return ep, frames


def projection_tables(frames: dict[str, dict], tol: float) -> dict[str, dict[str, np.ndarray]]:
    """`tables[a][b]`: `(H_a * W_a, 2)` int16, the pixel of camera b that shows what pixel `(u, v)` of a shows
    (row `v * W_a + u`), or -1 where b does not see it (or a has no depth there)."""
    import torch

    from dckp.geometry.camera import pixel_grid
    from dckp.geometry.correspondence import warp_pixels

    tables = {}
    for a, fa in frames.items():
        H, W = fa["depth"].shape
        uv = pixel_grid(H, W, dtype=torch.float64).reshape(-1, 2)
        tables[a] = {}
        for b, fb in frames.items():
            t = lambda x: torch.from_numpy(np.asarray(x, np.float64))  # noqa: E731
            uv_b, valid = warp_pixels(uv, t(fa["depth"]), t(fa["K"]), t(fa["pose"]), t(fb["depth"]), t(fb["K"]),
                                      t(fb["pose"]), tol=tol)
            Hb, Wb = fb["depth"].shape
            px = uv_b.round().numpy().astype(np.int64).clip(0, [Wb - 1, Hb - 1])
            tables[a][b] = np.where(valid.numpy()[:, None], px, -1).astype(np.int16)
    return tables


class Picks:
    """The points picked so far: `points[i]` = `{camera: (u, v)}` for the cameras that see point i."""

    def __init__(self, frames: dict[str, dict], tables: dict[str, dict[str, np.ndarray]]):
        self.frames, self.tables, self.points = frames, tables, []

    def add(self, cam: str, u: float, v: float) -> dict[str, tuple[int, int]] | None:
        """Pick at `(u, v)` (pixel coordinates, rounded to the nearest pixel) of `cam`; None (nothing picked)
        where that pixel has no depth or lies outside the image."""
        H, W = self.frames[cam]["depth"].shape
        u, v = int(np.floor(u + 0.5)), int(np.floor(v + 0.5))
        if not (0 <= u < W and 0 <= v < H):
            return None
        seen = {b: tuple(int(x) for x in table[v * W + u]) for b, table in self.tables[cam].items()
                if table[v * W + u, 0] >= 0}
        if cam not in seen:  # no depth at the clicked pixel
            return None
        self.points.append(seen)
        return seen

    def undo(self) -> None:
        if self.points:
            self.points.pop()

    def pixels(self, cam: str) -> list[list[int]]:
        return [list(p[cam]) for p in self.points if cam in p]

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """`<folder>/<camera>.json` for each camera that sees a point (others' files are removed); returns them."""
        folder = Path(folder)
        written = {}
        for cam in self.frames:
            path = folder / f"{cam}.json"
            if self.pixels(cam):
                save_json({"uv": self.pixels(cam)}, path)
                written[cam] = path
            else:
                path.unlink(missing_ok=True)
        return written


def keypoints_command(path, episode: str, frame: int, files: dict[str, Path], cameras) -> str:
    """The `dckp keypoints` command line that uses the picked pixels files."""
    flags = (f" --episode {episode}" if episode else "") + (f" --frame {frame}" if frame else "")
    pixels = " ".join(f"{cam}={files[cam]}" for cam in cameras if cam in files)
    return f"dckp keypoints --don DON --demos {path}{flags} --out references.safetensors --pixels {pixels}"


# --- the matplotlib window ---------------------------------------------------------------------------------------

def open_window(frames: dict[str, dict], tables, folder: str | os.PathLike, on_change=None):
    """A matplotlib figure with one panel per camera; clicks pick (the module's docstring), and after every
    change the pixels files in `folder` are rewritten and `on_change(picks)` is called. Returns (figure, picks)."""
    import matplotlib.pyplot as plt

    picks = Picks(frames, tables)
    cams = list(frames)
    fig, axes = plt.subplots(1, len(cams), figsize=(4.5 * len(cams), 5), squeeze=False)
    axes = dict(zip(cams, axes[0], strict=True))
    for cam, ax in axes.items():
        ax.imshow(frames[cam]["rgb"])
        ax.set_title(cam)
        ax.set_axis_off()
    fig.suptitle("left click: add a point (shown on every camera that sees it); right click or u: undo; "
                 "close the window when done", fontsize=9)
    artists = []

    def redraw():
        for a in artists:
            a.remove()
        artists.clear()
        for i, point in enumerate(picks.points):
            colour = f"C{i % 10}"
            for cam, (u, v) in point.items():
                artists.append(axes[cam].plot(u, v, "o", ms=MARKER / 2, mfc=colour, mec="white")[0])
                artists.append(axes[cam].annotate(str(i), (u, v), xytext=(4, 4), textcoords="offset points",
                                                  color="white", fontsize=8, weight="bold"))
        picks.write(folder)
        if on_change is not None:
            on_change(picks)
        fig.canvas.draw_idle()

    def on_click(event):
        cam = next((c for c, ax in axes.items() if ax is event.inaxes), None)
        if cam is None or event.xdata is None:
            return
        if event.button == 1:
            picks.add(cam, event.xdata, event.ydata)
        elif event.button == 3:
            picks.undo()
        redraw()

    def on_key(event):
        if event.key == "u":
            picks.undo()
            redraw()

    fig.canvas.mpl_connect("button_press_event", on_click)
    fig.canvas.mpl_connect("key_press_event", on_key)
    return fig, picks


# --- the HTML page -----------------------------------------------------------------------------------------------

def _png_uri(rgb: np.ndarray) -> str:
    import imageio.v3 as iio

    return "data:image/png;base64," + base64.b64encode(iio.imwrite("<bytes>", rgb, extension=".png")).decode()


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<i2").tobytes()).decode()


PICKER_JS = """
// The picking logic, apart from the page (it runs under node too): DATA.cameras[c] = {name, width, height,
// image, tables: {other camera: base64 little-endian int16 (H*W, 2), -1 = not seen}}.
function decodeTables(data) {
  for (const cam of data.cameras) {
    for (const [other, b64] of Object.entries(cam.tables)) {
      const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
      cam.tables[other] = new Int16Array(bytes.buffer);
    }
  }
}
function addPick(data, points, camName, u, v) {  // as Picks.add: null if nothing is picked
  const cam = data.cameras.find(c => c.name === camName);
  u = Math.floor(u + 0.5); v = Math.floor(v + 0.5);
  if (u < 0 || v < 0 || u >= cam.width || v >= cam.height) return null;
  const seen = {};
  for (const [other, table] of Object.entries(cam.tables)) {
    const i = 2 * (v * cam.width + u);
    if (table[i] >= 0) seen[other] = [table[i], table[i + 1]];
  }
  if (!(camName in seen)) return null;
  points.push(seen);
  return seen;
}
function pixelsFile(points, camName) {  // exactly what `dckp keypoints --pixels` reads
  return JSON.stringify({uv: points.filter(p => camName in p).map(p => p[camName])});
}
"""

PAGE_JS = """
decodeTables(DATA);
const points = [];
const SCALE = DATA.scale;
function draw() {
  for (const cam of DATA.cameras) {
    const canvas = document.getElementById('c-' + cam.name), ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(cam.img, 0, 0, canvas.width, canvas.height);
    points.forEach((p, i) => {
      if (!(cam.name in p)) return;
      const x = (p[cam.name][0] + 0.5) * SCALE, y = (p[cam.name][1] + 0.5) * SCALE;
      ctx.fillStyle = `hsl(${(i * 47) % 360}, 90%, 50%)`; ctx.strokeStyle = 'white';
      ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      ctx.fillStyle = 'white'; ctx.font = 'bold 12px sans-serif'; ctx.fillText(String(i), x + 6, y - 6);
    });
    document.getElementById('n-' + cam.name).textContent =
      points.filter(p => cam.name in p).length + ' points';
  }
}
function download(camName) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([pixelsFile(points, camName)], {type: 'application/json'}));
  a.download = camName + '.json';
  a.click();
}
for (const cam of DATA.cameras) {
  cam.img = new Image();
  cam.img.onload = draw;
  cam.img.src = cam.image;
  const canvas = document.getElementById('c-' + cam.name);
  canvas.addEventListener('click', e => {
    const r = canvas.getBoundingClientRect();
    const u = (e.clientX - r.left) * canvas.width / r.width / SCALE - 0.5;
    const v = (e.clientY - r.top) * canvas.height / r.height / SCALE - 0.5;
    if (addPick(DATA, points, cam.name, u, v) === null) alert('no depth there: pick another pixel');
    draw();
  });
}
document.getElementById('undo').addEventListener('click', () => { points.pop(); draw(); });
"""


def write_html(frames: dict[str, dict], tables, out: str | os.PathLike, title: str, command: str) -> Path:
    """The self-contained picking page (the module's docstring)."""
    from html import escape

    H = max(f["rgb"].shape[0] for f in frames.values())
    scale = max(1, round(384 / H))
    data = {"scale": scale, "cameras": [
        {"name": cam, "width": f["rgb"].shape[1], "height": f["rgb"].shape[0], "image": _png_uri(f["rgb"]),
         "tables": {b: _b64(t) for b, t in tables[cam].items()}} for cam, f in frames.items()]}
    panels = "".join(
        f'<figure><canvas id="c-{escape(cam)}" width="{f["rgb"].shape[1] * scale}" '
        f'height="{f["rgb"].shape[0] * scale}"></canvas><figcaption>{escape(cam)}: <span id="n-{escape(cam)}">'
        f'</span> <button onclick="download({escape(json.dumps(cam))})">download {escape(cam)}.json</button>'
        f'</figcaption></figure>' for cam, f in frames.items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dckp pick-references: {escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} figure{{display:inline-block;margin:0 1em 1em 0}}
canvas{{cursor:crosshair;image-rendering:pixelated}}</style></head>
<body><h3>Pick reference keypoints: {escape(title)}</h3>
<p>Click a point on any camera: it is shown, numbered, on every camera that sees it. Then download each camera's
file and run (with the files' paths):<br><code>{escape(command)}</code></p>
<p><button id="undo">undo the last point</button></p>
{panels}
<script id="picker-data">const DATA = {json.dumps(data)};</script>
<script id="picker-logic">{PICKER_JS}</script>
<script>{PAGE_JS}</script>
</body></html>
"""
    atomic_write_bytes(out, page.encode())
    return Path(out)


# --- the command -------------------------------------------------------------------------------------------------

def interactive_backend() -> bool:
    """Whether matplotlib's backend (resolved now: with a display, the first GUI toolkit it finds) opens windows."""
    import matplotlib

    return matplotlib.get_backend().lower() not in ("agg", "pdf", "ps", "svg", "cairo", "template")


def pick_references(path: str | os.PathLike, cfg: PickConfig, out: str | os.PathLike) -> list[str]:
    """Ask for the clicks on frame `cfg.frame` of `cfg.episode` of `path` (a window, or an HTML page written to
    `out/pick.html`); pixels files go to `out/<camera>.json`. Returns lines for the user."""
    ep, frames = load_frames(path, cfg.episode, cfg.frame)
    tables = projection_tables(frames, cfg.tol)
    out = Path(out)
    window = cfg.mode == "window" or (cfg.mode == "auto" and has_display())
    notes = []
    if window and not interactive_backend():
        if cfg.mode == "window":
            raise DckpError("matplotlib has no interactive backend here (install tkinter or PyQt, or set MPLBACKEND); "
                            "or use --mode html", field="--mode")
        window, notes = False, ["matplotlib has no interactive backend here: writing the HTML page instead"]
    command = keypoints_command(path, cfg.episode and ep, cfg.frame,
                                {cam: out / f"{cam}.json" for cam in frames}, frames)
    if not window:
        page = write_html(frames, tables, out / "pick.html", f"{path} {ep} frame {cfg.frame}",
                          command.replace(str(out) + os.sep, "DOWNLOADS/"))
        return notes + [f"wrote {page}: open it in a browser, click the points, download each camera's file, then:",
                        command.replace(str(out) + os.sep, "DOWNLOADS/")]
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    _, picks = open_window(frames, tables, out)
    plt.show()
    files = picks.write(out)
    lines = [f"{len(picks.points)} points; wrote " + ", ".join(str(p) for p in files.values())]
    missing = [cam for cam in frames if cam not in files]
    if missing:
        lines.append(f"no point seen by {', '.join(missing)}: `dckp keypoints --pixels` needs a file for every "
                     "camera; run again and pick points these cameras see")
    else:
        lines.append(keypoints_command(path, cfg.episode and ep, cfg.frame, files, frames))
    return lines
