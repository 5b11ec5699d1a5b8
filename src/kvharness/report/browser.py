"""Open a report in headless Chromium and check what a reader would see.

``python -m kvharness.report.browser results/report.html --screenshot results/report.png`` loads the page
through the Chrome DevTools protocol (loopback only), takes a full-page screenshot and checks that every
figure decoded (no broken image), that the index and the sections carry one verdict line per hypothesis,
that no figure is marked missing, and that the page runs no script at all (the report has none: any
``<script>`` element would be injected text). A test that plants :data:`CANARY` (e.g. as the model
name) also sees whether it ran (``canary``), which works for pages that do have scripts of their own
(Snakemake's report). Exit code 0 when every check passes, 1 otherwise, 2 when
no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: a value to plant where text is expected: if it ever runs, the probe's ``canary`` turns True
CANARY = "<script>window.__kvharness_canary=1</script><img src=x onerror=window.__kvharness_canary=1>"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_WIDTH = 1280
MAX_HEIGHT = 30000  # px; a longer page is cut (Chromium's texture limit)

PROBE = r"""(() => {
  const imgs = [...document.images];
  const sections = [...document.querySelectorAll('section[data-hyp]')];
  return JSON.stringify({
    title: document.title,
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    missing: [...document.querySelectorAll('.missing')].map(e => e.textContent.trim()),
    scripts: document.querySelectorAll('script').length,
    index_rows: [...document.querySelectorAll('tr.index-row')].map(r => r.dataset.hyp),
    index_verdicts: [...document.querySelectorAll('tr.index-row .verdict-line')].map(e => e.textContent.trim()),
    sections: sections.map(s => ({hyp: s.dataset.hyp,
                                  verdicts: s.querySelectorAll('p.verdict').length,
                                  verdict: (s.querySelector('p.verdict') || {}).textContent || '',
                                  figures: s.querySelectorAll('img.figure').length})),
    height: Math.ceil(document.documentElement.scrollHeight),
    canary: window.__kvharness_canary === 1,
  });
})()"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


async def _cdp_session(ws_url: str, html: Path, screenshot: Path | None, timeout_s: float) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            counter = 0
            events: list[dict] = []

            async def call(method: str, **params):
                nonlocal counter
                counter += 1
                my_id = counter
                await ws.send_json({"id": my_id, "method": method, "params": params})
                while True:
                    msg = await asyncio.wait_for(ws.receive_json(), timeout_s)
                    if msg.get("id") == my_id:
                        if "error" in msg:
                            raise BrowserError(f"{method}: {msg['error']}")
                        return msg.get("result", {})
                    events.append(msg)

            async def wait_event(name: str):
                while True:
                    for e in events:
                        if e.get("method") == name:
                            return e
                    events.append(await asyncio.wait_for(ws.receive_json(), timeout_s))

            await call("Page.enable")
            await call("Emulation.setDeviceMetricsOverride", width=PAGE_WIDTH, height=900, deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=html.resolve().as_uri())
            await wait_event("Page.loadEventFired")
            result = await call("Runtime.evaluate", expression=PROBE, returnByValue=True)
            probe = json.loads(result["result"]["value"])
            if screenshot is not None:
                height = min(max(int(probe["height"]), 1), MAX_HEIGHT)
                await call("Emulation.setDeviceMetricsOverride", width=PAGE_WIDTH, height=height, deviceScaleFactor=1, mobile=False)
                shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                  clip={"x": 0, "y": 0, "width": PAGE_WIDTH, "height": height, "scale": 1})
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                probe["screenshot"] = str(screenshot)
                probe["screenshot_height"] = height
            return probe


def inspect(html: str | Path, screenshot: str | Path | None = None, chromium: str | None = None,
            timeout_s: float = 60.0) -> dict:
    """Load ``html`` in headless Chromium; returns what the page shows (see ``PROBE``)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    html = Path(html)
    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such report")
    profile = Path(tempfile.mkdtemp(prefix="kvharness-chromium-"))
    argv = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None:
                raise BrowserError(f"{chromium} exited with code {proc.returncode} before opening its debugging port")
            if time.monotonic() > deadline:
                raise BrowserError(f"{chromium}: no debugging port within {timeout_s:.0f} s")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.loads(_http_get(f"http://127.0.0.1:{port}/json/list", timeout_s))
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            raise BrowserError("Chromium opened no page target")
        return asyncio.run(_cdp_session(page["webSocketDebuggerUrl"], html, Path(screenshot) if screenshot else None, timeout_s))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _http_get(url: str, timeout_s: float) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # loopback debugging port
        return resp.read().decode()


def problems(probe: dict, expected_hyps: list[str] | None = None) -> list[str]:
    """Every way the page falls short of what a reader needs; empty when it is fine."""
    out = []
    if probe["broken"]:
        out.append(f"broken image(s): {', '.join(probe['broken'])}")
    if probe["missing"]:
        out.append(f"missing output(s): {'; '.join(probe['missing'])}")
    if probe.get("canary"):
        out.append("planted script ran: a value was rendered as HTML, not as text")
    if probe["scripts"]:
        out.append(f"{probe['scripts']} <script> element(s) on a page that has none: injected text was not escaped")
    hyps = [s["hyp"] for s in probe["sections"]]
    if not hyps:
        out.append("no hypothesis section")
    for s in probe["sections"]:
        if s["verdicts"] != 1 or not s["verdict"].strip():
            out.append(f"{s['hyp']}: {s['verdicts']} verdict lines (expected 1)")
        if s["hyp"] not in probe["index_rows"]:
            out.append(f"{s['hyp']}: no line in the index")
    for hyp, line in zip(probe["index_rows"], probe["index_verdicts"]):
        if not line:
            out.append(f"{hyp}: empty verdict in the index")
    for hyp in expected_hyps or []:
        if hyp not in hyps:
            out.append(f"{hyp}: no section")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvharness.report.browser", description=__doc__.splitlines()[0])
    p.add_argument("html", nargs="?", default="results/report.html")
    p.add_argument("--screenshot", help="write a full-page PNG here")
    p.add_argument("--expect", action="append", default=[], metavar="HYP", help="a hypothesis that must have a section")
    args = p.parse_args(argv)
    try:
        probe = inspect(args.html, args.screenshot)
    except FileNotFoundError as exc:
        print(f"report check: {exc}", file=sys.stderr)
        return 2
    except BrowserError as exc:
        print(f"report check: {exc}", file=sys.stderr)
        return 1
    issues = problems(probe, args.expect)
    print(f"report check: {len(probe['sections'])} sections ({', '.join(s['hyp'] for s in probe['sections'])}), "
          f"{probe['images']} images, {len(probe['broken'])} broken, page {probe['height']} px high"
          + (f", screenshot {probe['screenshot']}" if probe.get("screenshot") else ""))
    for issue in issues:
        print(f"report check: FAIL {issue}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
