"""Screenshots of an ``optc report`` page and a graph picture in headless Chromium, so that a
person can check they look right (tests check the HTML's content, never pixels).

    python -m optc.tools.reports.screenshot report.html docs/report.png [--width 1200] \
        [--height 2400]
    python -m optc.tools.reports.screenshot diff.svg docs/graph.png

Needs a Chromium (or Chrome) binary: ``apt-get install chromium``. The browser runs with no
network, no GPU, no sync or component updates, in a throw-away profile. PNGs are shrunk with
Pillow when it is installed and the picture exceeds ``--max-kb``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from optc.errors import InputError, OptcError, OutputError

__all__ = ["find_browser", "screenshot", "main"]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--proxy-server=127.0.0.1:9", "--force-device-scale-factor=1")
"""Offline, unattended, reproducible: a dead proxy keeps the page from reaching any network."""


def find_browser() -> str:
    """The path of a Chromium/Chrome binary; :class:`InputError` says how to get one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise InputError("no Chromium found (install it: apt-get install chromium)")


def _page_for(path: Path, tmp: Path) -> Path:
    """An HTML page showing ``path``: the report itself, or an SVG/PNG picture on white."""
    if path.suffix.lower() in (".html", ".htm"):
        return path
    if path.suffix.lower() not in (".svg", ".png"):
        raise InputError(f"'{path}' is not an .html report or an .svg/.png picture")
    page = tmp / "picture.html"
    page.write_text("<!DOCTYPE html><html><body style='margin:0;background:#fff'>"
                    f"<img src='{path.resolve().as_uri()}' style='max-width:100%'></body></html>")
    return page


def screenshot(source: str | os.PathLike, out: str | os.PathLike, width: int = 1200,
               height: int = 2400, max_kb: int = 300, timeout: float = 120.0) -> Path:
    """Render ``source`` (.html, .svg or .png) in headless Chromium and save ``out`` (.png)."""
    src, dst = Path(source), Path(out)
    if not src.is_file():
        raise InputError(f"'{src}' does not exist")
    if dst.suffix.lower() != ".png":
        raise InputError(f"'{dst}': screenshots are .png files")
    if not dst.parent.is_dir():
        raise OutputError(f"cannot write '{dst}': directory '{dst.parent}' does not exist")
    browser = find_browser()
    aspect = _aspect(src)
    if aspect is not None:  # a picture: a window of its proportions shows all of it
        height = min(int(width * aspect) + 16, 12000)
    with tempfile.TemporaryDirectory(prefix="optc-shot-") as tmp:
        page = _page_for(src, Path(tmp))
        shot = Path(tmp) / "shot.png"
        cmd = [browser, *FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
               f"--screenshot={shot}", page.resolve().as_uri()]
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OutputError(f"Chromium did not finish within {timeout:.0f} s") from None
        if not shot.is_file():
            raise OutputError(f"Chromium wrote no screenshot of '{src}'")
        _shrink(shot, max_kb)
        shutil.copyfile(shot, dst)
    return dst


def _aspect(path: Path) -> float | None:
    """Height / width of an SVG (its width/height attributes) or PNG picture; None for pages
    and pictures whose size cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".svg":
            head = path.read_text(errors="replace")[:4000]
            w = re.search(r'<svg[^>]*?\swidth="([\d.]+)', head, re.S)
            h = re.search(r'<svg[^>]*?\sheight="([\d.]+)', head, re.S)
            return float(h.group(1)) / float(w.group(1)) if w and h and float(w.group(1)) else None
        if suffix == ".png":
            data = path.read_bytes()[16:24]
            w, h = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")
            return h / w if w else None
    except (OSError, ValueError):
        return None
    return None


def _shrink(png: Path, max_kb: int) -> None:
    """Quantize to a palette (and then scale down) until the PNG is under ``max_kb``."""
    if png.stat().st_size <= max_kb * 1024:
        return
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - optional
        return
    image = Image.open(png).convert("RGB")
    scale = 1.0
    while True:
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        small = image.resize(size, Image.LANCZOS) if scale < 1 else image
        small.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
        if png.stat().st_size <= max_kb * 1024 or scale < 0.3:
            return
        scale *= 0.85


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.tools.reports.screenshot",
                                description="Screenshot an optc report or graph picture.")
    p.add_argument("source", help="report .html, or graph .svg/.png")
    p.add_argument("out", help="screenshot .png")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--max-kb", type=int, default=300, help="shrink the PNG below this size")
    args = p.parse_args(argv)
    try:
        written = screenshot(args.source, args.out, args.width, args.height, args.max_kb)
    except OptcError as exc:
        sys.stderr.write(f"optc: error: {exc}\n")
        return exc.exit_code
    print(f"wrote {written} ({written.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
