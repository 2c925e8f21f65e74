"""End to end in the real frontend: headless Chromium (Debian's `chromium`, driven by Playwright; no browser download)
opens the ComfyUI 0.3.75 frontend served by the test server, loads each shipped workflow, and checks what an artist
would see: every node type known, no node in error, no "missing nodes" dialog. It saves a screenshot per workflow
into a temporary folder (the tracked docs/screenshots/, used by the README, change only when asked:
`pytest tests/test_browser.py --screenshot-dir docs/screenshots`), checks that the frontend's own UI→API conversion
equals tools/workflow_api.py's, then queues the workflow from the page (with the tiny checkpoint substituted) and
waits for the saved video.

Needs `apt-get install chromium` and `pip install playwright` (.ci/run does both). Without them the tests FAIL; a
machine that deliberately has no browser lane sets EASYANIMATE_BROWSER_TESTS=off and they are skipped with that
reason.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from run_workflow import choose_models, example_inputs
from workflow_api import to_api

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
BROWSER_LANE_ENV = "EASYANIMATE_BROWSER_TESTS"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
READY = "window.app && app.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 100"


class Frontend:
    """The ComfyUI page in headless Chromium, with the few app.* calls the tests need."""

    def __init__(self, page, server):
        self.page, self.server = page, server

    def open(self) -> None:
        # no first-run templates dialog (docs/architecture.md, tests)
        self.server.post("/settings", {"Comfy.TutorialCompleted": True})
        self.page.goto(self.server.url)
        self.page.wait_for_function(READY, timeout=120_000)

    def unknown_types(self, workflow: dict) -> list[str]:
        return self.page.evaluate(
            "wf => wf.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types))", workflow
        )

    def load(self, workflow: dict) -> None:
        self.page.evaluate("async wf => { await app.loadGraphData(wf); }", workflow)
        self.page.wait_for_timeout(300)

    def nodes_with_errors(self) -> list[str]:
        return self.page.evaluate("() => app.graph.nodes.filter(n => n.has_errors).map(n => n.type)")

    def missing_nodes_dialog(self) -> str:
        texts = self.page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")
        return "\n".join(t for t in texts if "missing" in t.lower())

    def alerts(self) -> list[str]:
        """Toasts the page shows (e.g. "Invalid workflow against zod schema" for a malformed file)."""
        return self.page.evaluate("() => [...document.querySelectorAll('.p-toast-message')].map(t => t.innerText)")

    def serialize(self) -> dict:
        # Through JSON.stringify, as saving a file does: undefined fields vanish instead of becoming null.
        return json.loads(self.page.evaluate("() => JSON.stringify(app.graph.serialize())"))

    def api_prompt(self) -> dict:
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def fit_view(self) -> None:
        self.page.evaluate(
            "async () => { try { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); } catch (e) {} "
            "app.canvas.setDirty(true, true); }"
        )
        self.page.wait_for_timeout(300)

    def queue(self) -> None:
        self.page.evaluate("async () => { await app.queuePrompt(0, 1); }")

    def last_node_errors(self) -> dict:
        return self.page.evaluate("() => app.lastNodeErrors || {}") or {}


def wait_for_new_history(server, known: set, timeout: float = 300.0) -> dict:
    """The first /history entry not in `known` once it has finished (queuePrompt returns no id in 1.32.9,
    docs/architecture.md, tests)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        history = server.get("/history")
        fresh = [entry for prompt_id, entry in history.items() if prompt_id not in known]
        if fresh and fresh[0].get("status", {}).get("completed") is not None:
            return fresh[0]
        queue = server.get("/queue")
        idle = not queue["queue_running"] and not queue["queue_pending"]
        if not fresh and idle and time.monotonic() - started > 20:
            raise AssertionError("nothing was queued, or it vanished; server log:\n" + server.log()[-3000:])
        time.sleep(0.5)
    raise TimeoutError(f"no finished prompt after {timeout:.0f}s")


def comparable(prompt: dict, object_info: dict) -> dict:
    """API prompt without what the server ignores: the _meta titles and inputs the node does not declare (the
    frontend sends its display-only widgets too, e.g. LoadVideo's "video-preview" once the preview has loaded)."""

    def declared(class_type):
        spec = object_info[class_type]["input"]
        return {*spec.get("required", {}), *spec.get("optional", {})}

    return {
        node_id: {
            "class_type": node["class_type"],
            "inputs": {k: v for k, v in node["inputs"].items() if k in declared(node["class_type"])},
        }
        for node_id, node in prompt.items()
    }


@pytest.fixture(scope="module")
def screenshot_dir(request, tmp_path_factory) -> Path:
    chosen = request.config.getoption("--screenshot-dir")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser_lane_off() -> bool:
    return os.environ.get(BROWSER_LANE_ENV, "").lower() in ("0", "off", "false", "no")


@pytest.fixture(scope="module")
def frontend(request):
    if browser_lane_off():
        pytest.skip(f"{BROWSER_LANE_ENV}=off: the browser lane is switched off on this machine")
    try:
        import playwright.sync_api as playwright_api
    except ImportError as error:
        pytest.fail(
            f"playwright is not installed ({error}): pip install -r requirements-test.txt (see .ci/run), or "
            f"set {BROWSER_LANE_ENV}=off where no browser lane is wanted"
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (see .ci/run)")
    comfy_server = request.getfixturevalue("comfy_server")  # only once the browser lane is known to be usable
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        console_errors = []
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        ui = Frontend(page, comfy_server)
        ui.open()
        ui.console_errors = console_errors
        yield ui
        browser.close()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_in_the_frontend_and_runs_from_the_page(frontend, comfy_server, screenshot_dir, path):
    workflow = json.loads(path.read_text())

    # What an artist sees after dragging the file in: known nodes, no errors, no missing-nodes dialog.
    assert frontend.unknown_types(workflow) == []
    frontend.load(workflow)
    assert frontend.nodes_with_errors() == []
    assert frontend.missing_nodes_dialog() == ""
    assert frontend.alerts() == []
    assert len(frontend.serialize()["nodes"]) == len(workflow["nodes"])
    frontend.fit_view()
    frontend.page.screenshot(path=str(screenshot_dir / f"{path.stem}.png"))
    assert (screenshot_dir / f"{path.stem}.png").stat().st_size > 0

    # The frontend's own conversion is the reference for ours (tools/workflow_api.py).
    object_info = comfy_server.object_info()
    assert comparable(frontend.api_prompt(), object_info) == comparable(to_api(workflow, object_info), object_info)

    # Queue it from the page with the tiny checkpoint, and wait for the video.
    tiny_workflow, tiny = choose_models(workflow, object_info)
    assert tiny
    for example in example_inputs(tiny_workflow, object_info):
        comfy_server.upload_image(example)
    frontend.load(tiny_workflow)
    known = set(comfy_server.get("/history"))
    frontend.queue()
    entry = wait_for_new_history(comfy_server, known)
    assert frontend.last_node_errors() == {}
    assert entry["status"]["status_str"] == "success", entry["status"]
    videos = [
        item
        for output in entry["outputs"].values()
        for items in output.values()
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict) and "filename" in item
    ]
    assert len(videos) == 1 and videos[0]["filename"].endswith(".mp4"), entry["outputs"]
    assert comfy_server.output_path(videos[0]).stat().st_size > 0
    assert frontend.console_errors == []
