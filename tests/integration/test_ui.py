"""The web dashboard (/ui) in a real browser: Debian's chromium driven by playwright, against 3 replicas and
4 sim agents as real processes. Sign in with the admin token, see a job's replicas, drain their machine from
the page and watch the replicas move, with no page reload. Screenshots are kept as test artifacts (the
pytest tmp dir, and $RAFTCTL_ARTIFACTS when set)."""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from .conftest import agents_cluster, client_for, healthy, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_DIR = Path(__file__).resolve().parents[2] / "raftctl" / "node" / "ui"


def sim_job(name: str, replicas: int) -> dict:
    return {"name": name, "image": "sim:1", "command": ["serve"], "replicas": replicas,
            "resources": {"cpu": "250m", "memory": "128Mi"}, "ports": [{"name": "http"}],
            "update": {"max_unavailable": 2}}


@pytest.fixture(scope="module")
def ui_cluster(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "ui", agents=4, runtime="sim", zones=2) as c:
        yield c


def fetch(url: str, token: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_shell_is_public_but_carries_no_data(ui_cluster):
    url = ui_cluster.servers[1].url
    status, headers, body = fetch(url + "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/ui/app.js" in body and b"Sign in" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, _ = fetch(f"{url}/ui/{name}")
        assert status == 200 and headers["Content-Type"].startswith(ctype)
    assert fetch(url + "/ui/secret")[0] == 404
    assert fetch(url + "/ui/..%2fapi.py")[0] == 404
    assert fetch(url + "/v1/machines")[0] == 401              # data needs the token
    assert fetch(url + "/ui", None)[0] == 200                  # redirected to /ui/


def test_the_app_builds_the_dom_without_parsing_html():
    """Names come from users: the app only ever creates elements and text nodes."""
    js = (UI_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink


def _artifact_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path]
    if os.environ.get("RAFTCTL_ARTIFACTS"):
        d = Path(os.environ["RAFTCTL_ARTIFACTS"])
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
    return dirs


def _screenshot(page, tmp_path: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    first = tmp_path / name
    page.screenshot(path=str(first), full_page=True)
    for d in _artifact_dirs(tmp_path)[1:]:
        shutil.copy(first, d / name)
    return first


def test_drain_from_the_page_moves_the_replicas_live(ui_cluster, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"SKIPPED LOUDLY: {CHROMIUM} is not installed (make system-deps installs Debian's chromium as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    c = ui_cluster
    client_for(c).request("PUT", "/v1/jobs/web", sim_job("web", 4))
    wait_until(lambda: len(healthy(c, "web")) == 4, timeout=60, what="4 healthy replicas of web")
    url = c.servers[0].url + "/ui/"

    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900})
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda d: d.accept())        # the drain button asks for confirmation
            page.goto(url)

            # a wrong token is refused on the login page
            page.fill("#token", "rct_not-a-token")
            page.click("form#login button[type=submit]")
            sync_api.expect(page.locator("#login-error")).to_contain_text("Sign-in failed")
            page.fill("#token", c.token() or "")
            page.click("form#login button[type=submit]")
            sync_api.expect(page.locator("#nav")).to_be_visible()
            page.evaluate("window.__sameDocument = 'yes'")   # gone if the page ever reloads

            # the cluster view: three replicas, one leader
            sync_api.expect(page.locator("#view table.members tbody tr")).to_have_count(3)
            sync_api.expect(page.locator("#view .pill.leader")).to_have_count(1)
            _screenshot(page, tmp_path, "ui-cluster.png")

            page.click("#nav a[data-view=jobs]")
            replicas = page.locator("tr[data-job=web] .replica.healthy")
            sync_api.expect(replicas).to_have_count(4)
            where = replicas.evaluate_all("els => els.map(e => e.dataset.machine)")
            assert sorted(where) == sorted(p["machine"] for p in healthy(c, "web"))
            victim = Counter(where).most_common(1)[0][0]
            _screenshot(page, tmp_path, "ui-jobs-before-drain.png")

            page.click("#nav a[data-view=machines]")
            page.click(f"tr[data-machine={victim}] button[data-action=drain]")
            sync_api.expect(page.locator(f"tr[data-machine={victim}] .pill")).to_have_text("drained", timeout=60_000)
            sync_api.expect(page.locator(f"tr[data-machine={victim}] button[data-action=undrain]")).to_be_visible()
            _screenshot(page, tmp_path, "ui-machines-after-drain.png")

            page.click("#nav a[data-view=jobs]")
            page.wait_for_function(
                """victim => {
                     const els = [...document.querySelectorAll("tr[data-job=web] .replica")];
                     return els.length === 4 && els.every(e => e.classList.contains("healthy") && e.dataset.machine !== victim);
                   }""", arg=victim, timeout=60_000)
            moved = replicas.evaluate_all("els => els.map(e => e.dataset.machine)")
            assert victim not in moved and len(moved) == 4
            assert page.evaluate("window.__sameDocument") == "yes", "the page reloaded"
            shot = _screenshot(page, tmp_path, "ui-jobs-after-drain.png")
            assert shot.stat().st_size > 10_000

            for view in ("deploys", "discovery", "events", "efficiency", "cluster"):
                page.click(f"#nav a[data-view={view}]")
                sync_api.expect(page.locator("#view h1")).to_be_visible()
            sync_api.expect(page.locator("#view .events tbody tr").first).to_be_visible()
            page.click("#nav a[data-view=efficiency]")
            # the agents' usage reports reach the page: CPU used is a figure, not '?'
            sync_api.expect(page.locator("[data-card='CPU used'] .v")).to_contain_text("m (", timeout=60_000)
            sync_api.expect(page.locator(f"#view tr[data-machine={victim}] td").nth(2)).to_have_text("0 / 2")
            _screenshot(page, tmp_path, "ui-efficiency.png")
            assert errors == [], errors
        finally:
            ctx.close()
    client_for(c).request("POST", f"/v1/machines/{victim}/undrain")
