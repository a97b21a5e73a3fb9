#!/usr/bin/env python
"""Screenshot of the `itm serve` page in headless Chromium (Debian's chromium), for the README.

Starts its own server for --run (searching --images), uploads --image, types the captions,
scores them, runs one search, and saves a palette PNG (small enough for a README).

    .venv/bin/python scripts/screenshot_serve.py --run RUN --images DIR --image X.jpg \\
        --caption "..." --caption "..." --query "..." --out docs/serve.png
"""
import argparse
import shutil
import sys
from pathlib import Path

from bench_serve import start_server

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--caption", action="append", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()

    from PIL import Image
    from playwright.sync_api import sync_playwright

    server, url, _log = start_server(args.run, "--images", str(args.images))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1040, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('threshold').textContent.includes('threshold')")
            page.set_input_files("#file", str(args.image))
            page.fill("#captions", "\n".join(args.caption))
            page.click("#score")
            page.wait_for_selector("#results[data-done='1']")
            page.fill("#query", args.query)
            page.click("#search-button")
            page.wait_for_selector("#search-results figure")
            page.wait_for_function("[...document.querySelectorAll('#search-results img')].every(i => i.complete)")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    im = Image.open(args.out).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {im.width}x{im.height}, {args.out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
