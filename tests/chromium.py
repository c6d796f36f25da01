"""Load an HTML page in real headless Chromium: its DOM after scripts ran, its errors, a screenshot.

Used by tests/test_report.py and by scripts/report_screenshot.py (the README
picture), so both see the page the same way. Nothing here needs a display or a
network: Chromium runs with --headless --no-sandbox --disable-gpu
--disable-background-networking and a throw-away profile.

Errors are caught two ways: a tiny hook injected at the top of a copy of the
page (window errors, failed resource loads, unhandled rejections and
console.error calls, written into a <pre id="__page_errors"> element that
--dump-dom then shows), and Chromium's own console log on stderr, scanned for
"Uncaught".

PNG screenshots are decoded with zlib and struct only (no Pillow needed).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BASE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
ERRORS_ID = "__page_errors"

ERROR_HOOK = f"""<script>(function () {{
  var seen = [];
  function put(message) {{
    seen.push(String(message));
    var el = document.getElementById("{ERRORS_ID}");
    if (!el) {{
      el = document.createElement("pre");
      el.id = "{ERRORS_ID}";
      (document.body || document.documentElement).appendChild(el);
    }}
    el.textContent = seen.join("\\n");
  }}
  window.addEventListener("error", function (e) {{
    if (e.target && e.target !== window) {{
      put("failed to load " + (e.target.src || e.target.href || e.target.tagName));
      return;
    }}
    put("error: " + e.message + " @" + e.filename + ":" + e.lineno);
  }}, true);
  window.addEventListener("unhandledrejection", function (e) {{
    put("unhandled rejection: " + (e.reason && e.reason.stack ? e.reason.stack : e.reason));
  }});
  var original = console.error;
  console.error = function () {{
    put("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  }};
}})();</script>"""


def find_chromium() -> str | None:
    """The Chromium binary ($ARITHLENS_CHROMIUM, else the first one on PATH), or None."""
    override = os.environ.get("ARITHLENS_CHROMIUM")
    if override:
        return override if Path(override).exists() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    """What Chromium made of a page."""

    dom: str
    errors: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def plotly_divs(self) -> int:
        """Elements Plotly.newPlot turned into plots (it adds the js-plotly-plot class)."""
        return len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', self.dom))

    @property
    def drawn_figures(self) -> int:
        """Plotly plots that hold a drawn <svg class="main-svg">."""
        parts = re.split(r'class="[^"]*\bjs-plotly-plot\b', self.dom)[1:]
        return sum(1 for part in parts if 'class="main-svg"' in part)


def _with_error_hook(html: str) -> str:
    match = re.search(r"<head[^>]*>", html, flags=re.IGNORECASE)
    if match is None:
        return ERROR_HOOK + html
    return html[: match.end()] + ERROR_HOOK + html[match.end() :]


def _run(binary: str, args: list[str], profile: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    command = [binary, *BASE_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def _console_errors(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if ":CONSOLE" in line and "Uncaught" in line]


def load_page(
    html_path: Path,
    *,
    budget_ms: int = 30000,
    window: tuple[int, int] = (1280, 1600),
    screenshot: Path | None = None,
    timeout_s: float = 300.0,
    binary: str | None = None,
) -> PageResult:
    """Open a copy of `html_path` (with the error hook) and return its DOM after scripts ran.

    With `screenshot`, the same launch also writes a PNG of the top `window` of the page there.
    (Headless Chromium draws a blank picture when the page is scrolled, e.g. to a #fragment.)
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found (install Debian's chromium or set ARITHLENS_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="arithlens-chromium-") as tmp:
        tmp_path = Path(tmp)
        page = tmp_path / "page.html"
        page.write_text(_with_error_hook(Path(html_path).read_text(encoding="utf-8")), encoding="utf-8")
        args = [f"--virtual-time-budget={budget_ms}", f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"]
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.unlink(missing_ok=True)
            args.append(f"--screenshot={screenshot}")
        # One launch does both: Chromium dumps the DOM and writes the screenshot once the time budget is spent.
        done = _run(binary, [*args, "--dump-dom", page.as_uri()], tmp_path / "profile", timeout_s)
        if done.returncode != 0 or "<html" not in done.stdout:
            raise RuntimeError(f"chromium failed (exit {done.returncode}): {done.stderr[-2000:]}")
        if screenshot is not None and not screenshot.is_file():
            raise RuntimeError(f"chromium wrote no screenshot: {done.stderr[-2000:]}")
        dom = done.stdout
        errors = _console_errors(done.stderr)
        match = re.search(rf'<pre id="{ERRORS_ID}">(.*?)</pre>', dom, flags=re.DOTALL)
        if match:
            errors += [line for line in match.group(1).splitlines() if line.strip()]
        return PageResult(dom=dom, errors=errors, log=done.stderr)


@dataclass
class Image:
    """A decoded 8-bit PNG: `rows[y]` holds width * channels bytes."""

    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        start = x * self.channels
        return tuple(self.rows[y][start : start + self.channels])


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path: Path) -> Image:
    """Decode a non-interlaced 8-bit greyscale/RGB/RGBA PNG (what Chromium writes)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    offset, header, compressed = 8, b"", bytearray()
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})")
    raw = zlib.decompress(bytes(compressed))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + previous[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up_left = previous[i - channels] if i >= channels else 0
                line[i] = (line[i] + _paeth(left, previous[i], up_left)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


def content_share(image: Image, step: int = 4) -> tuple[float, int]:
    """Share of sampled pixels that differ from the most common one, and the number of distinct colours."""
    counts: dict[tuple[int, ...], int] = {}
    for y in range(0, image.height, step):
        for x in range(0, image.width, step):
            colour = image.pixel(x, y)[:3]
            counts[colour] = counts.get(colour, 0) + 1
    total = sum(counts.values())
    background = max(counts.values()) if counts else 0
    return (1 - background / total if total else 0.0), len(counts)
