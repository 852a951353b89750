"""The MLflow UI in a real browser: the compare view of the demo detectors, screenshotted by headless Chromium.

Also a script (``make ui-screenshot``)::

    python -m tests.test_ui_screenshot --out docs/mlflow_compare.png

It serves the project's store (``mlruns.db`` + ``mlartifacts/``) with ``mlflow ui`` on loopback, picks the
latest finished run of each detector in ``detectors-demo`` (after ``make demo``; when fewer than four are there
it trains four small runs into a temporary store instead), opens their compare view in headless Chromium
(Debian's ``chromium``) driven by Playwright's ``playwright-core`` from npm, installed outside the repository
(``npm install --prefix $TMPDIR/mlflow-ui-shot playwright-core``; set ``PLAYWRIGHT_NODE_MODULES`` to use another
copy), and saves a PNG. With ``--pages DIR`` it also saves the run page of a demo training run with its
datasets panel (``mlflow_datasets.png``) and the demo experiment's run list with a sweep's parent run and its
children unfolded (``mlflow_sweep.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import mlflow
import pytest

from experiments.bench.throughput import suite_detectors
from tests.test_mlflow_server import free_port, stop_server, wait_for_health

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
NODE_MODULES = Path(os.environ.get("PLAYWRIGHT_NODE_MODULES",
                                   Path(tempfile.gettempdir()) / "mlflow-ui-shot" / "node_modules"))
DETECTORS = suite_detectors()
EXPERIMENT = "detectors-demo"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

# Playwright script around the page steps of one screenshot: launch Chromium, open the URL, run the steps, save.
# The steps read ``args`` (the script's arguments after url, out, exe, userDir, flags).
BROWSER_JS = r"""
const { chromium } = require('playwright-core');
const [url, out, exe, userDir, flags, ...args] = process.argv.slice(1);
(async () => {
  const context = await chromium.launchPersistentContext(userDir, {
    executablePath: exe, headless: true, args: JSON.parse(flags), viewport: { width: 1400, height: 1000 },
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 90000 });
    STEPS
    await page.waitForTimeout(1500);
    await page.screenshot({ path: out });
    console.log('saved ' + out);
  } finally {
    await context.close();
  }
})().catch((err) => { console.error(err); process.exit(1); });
"""

# the compare view: fold the (long) parameter list away, wait for the metric rows
COMPARE_STEPS = r"""
    await page.getByText('Run details', { exact: true }).first().waitFor({ timeout: 90000 });
    // fold the long parameter and tag lists so that the runs and their metrics fill the picture
    for (const section of ['Parameters', 'Tags', 'Artifacts']) {
      const header = page.getByText(section, { exact: true }).first();
      if (await header.count()) { await header.click(); }
    }
    // metric rows are rendered as they scroll into view: wait for the first ones
    await page.getByText('best_val/auc', { exact: true }).first().waitFor({ state: 'attached', timeout: 60000 });
    // close the assistant side panel, if this MLflow version shows one
    const close = page.getByRole('button', { name: /close/i }).last();
    if (await close.count()) { await close.click({ timeout: 5000 }).catch(() => {}); }
    // the compare view scrolls inside its own panel: bring the run table to the top of the window
    await page.getByText('Run details', { exact: true }).first().evaluate((el) => el.scrollIntoView({ block: 'start' }));
"""

# any page: wait for a text (args[0]), click the given texts (args[1], JSON) that are present
PAGE_STEPS = r"""
    const [waitText, clicks] = args;
    await page.getByText(waitText).first().waitFor({ timeout: 90000 });
    for (const text of JSON.parse(clicks)) {  // a text, or 'before:<text>' for the button just before that text
      const target = text.startsWith('before:')
        ? page.getByText(text.slice(7)).first().locator('xpath=preceding::button[1]') : page.getByText(text).first();
      if (await target.count()) { await target.click({ timeout: 10000 }).catch(() => {}); await page.waitForTimeout(1500); }
    }
"""


def missing_tools() -> str | None:
    """Why the browser test cannot run here, or None."""
    if CHROMIUM is None:
        return "chromium is not installed (Debian: apt-get install -y chromium)"
    if NODE is None:
        return "node is not installed (Debian: apt-get install -y nodejs npm)"
    if not (NODE_MODULES / "playwright-core").is_dir():
        return (f"playwright-core is not installed under {NODE_MODULES} "
                f"(npm install --prefix {NODE_MODULES.parent} playwright-core)")
    return None


def detector_runs(tracking_uri: str, experiment: str = EXPERIMENT) -> list[mlflow.entities.Run]:
    """The latest finished run of each demo detector, or [] when one of them is missing."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["start_time DESC"])
    latest = {}
    for run in runs:
        latest.setdefault(run.data.params.get("model/name"), run)
    return [latest[m] for m in DETECTORS if m in latest] if all(m in latest for m in DETECTORS) else []


def train_small_runs(folder: Path) -> str:
    """Four one-epoch demo runs (a few images per class) into a SQLite store under ``folder``; its URI."""
    from experiments.tasks.train import train
    from tests.conftest import compose_config

    uri = f"sqlite:///{folder / 'mlruns.db'}"
    data_root = ROOT / "data" / "demo"
    for model in DETECTORS:
        overrides = [f"model={model}", "experiment=demo", "data.max_per_class=12", "data.num_workers=0",
                     "trainer.max_epochs=1", "diagnostics=false", "~callbacks.progress_bar"]
        if data_root.is_dir():
            overrides.append(f"data.root={data_root}")
        cfg = compose_config(overrides, folder / model)
        cfg.logger.tracking_uri = uri
        cfg.logger.artifact_location = str(folder / "mlartifacts")
        train(cfg)
    return uri


def compare_url(base: str, runs: list[mlflow.entities.Run]) -> str:
    ids = json.dumps([r.info.run_id for r in runs])
    exps = json.dumps(sorted({r.info.experiment_id for r in runs}))
    return f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={urllib.parse.quote(exps)}"


def serve_ui(db: Path, artifacts: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow ui`` over ``db`` on a free loopback port, in its own process group; (process, base URL)."""
    port = free_port()
    log = folder / "ui.log"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, proc, log)
    except BaseException:
        stop_server(proc)
        raise
    return proc, base


def run_browser(steps: str, url: str, out: Path, folder: Path, args: list[str] = (), timeout: float = 240) -> None:
    """Screenshot ``url`` into ``out`` in headless Chromium after the page ``steps`` (:data:`BROWSER_JS`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    user_dir = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=folder))
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run([NODE, "-e", BROWSER_JS.replace("STEPS", steps), url, str(out), CHROMIUM, str(user_dir),
                           json.dumps(CHROMIUM_FLAGS), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the browser could not take the screenshot:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")


def take_screenshot(url: str, out: Path, folder: Path, timeout: float = 240) -> None:
    """The compare view at ``url``, its metric rows in sight, saved as ``out``."""
    run_browser(COMPARE_STEPS, url, out, folder, timeout=timeout)


def take_page_screenshot(url: str, out: Path, folder: Path, wait_text: str, clicks: list[str] = (),
                         timeout: float = 240) -> None:
    """Open ``url``, wait for ``wait_text``, click each of ``clicks`` that is on the page, save ``out``."""
    run_browser(PAGE_STEPS, url, out, folder, [wait_text, json.dumps(list(clicks))], timeout)


def sweep_parent(tracking_uri: str, experiment: str = EXPERIMENT) -> mlflow.entities.Run | None:
    """The newest finished sweep parent run (``task=sweep``) of ``experiment`` that has children, or None."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    for run in client.search_runs([exp.experiment_id], "tags.task = 'sweep'", order_by=["start_time DESC"]):
        if client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=1):
            return run
    return None


def screenshot_tracking_pages(db: Path, artifacts: Path, out_dir: Path, work: Path) -> dict[str, Path]:
    """The run page of the newest demo training run, its datasets panel open (``mlflow_datasets.png``), and the
    demo experiment's run list with the newest sweep's parent run unfolded (``mlflow_sweep.png``)."""
    uri = f"sqlite:///{db}"
    runs = detector_runs(uri)
    parent = sweep_parent(uri)
    if not runs or parent is None:
        raise RuntimeError(f"{EXPERIMENT} in {db} has no finished sweep of the four detectors: run `make demo` first")
    proc, base = serve_ui(db, artifacts, work)
    saved = {}
    try:
        run = runs[0]
        saved["datasets"] = out_dir / "mlflow_datasets.png"
        take_page_screenshot(f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
                             saved["datasets"], work, "Datasets", ["demo-train"])
        saved["sweep"] = out_dir / "mlflow_sweep.png"
        take_page_screenshot(f"{base}/#/experiments/{parent.info.experiment_id}/runs", saved["sweep"], work,
                             parent.info.run_name, [f"before:{parent.info.run_name}"])
    finally:
        stop_server(proc)
    return saved


def screenshot_compare_view(db: Path, artifacts: Path, out: Path, work: Path) -> list[mlflow.entities.Run]:
    """Serve ``db``, screenshot the compare view of its four demo detector runs into ``out``; the runs."""
    runs = detector_runs(f"sqlite:///{db}")
    if not runs:
        print(f"{EXPERIMENT} in {db} lacks one of {DETECTORS}; training four small runs into {work}")
        train_small_runs(work)
        db, artifacts = work / "mlruns.db", work / "mlartifacts"
        runs = detector_runs(f"sqlite:///{db}")
    proc, base = serve_ui(db, artifacts, work)
    try:
        take_screenshot(compare_url(base, runs), out, work)
    finally:
        stop_server(proc)
    return runs


@pytest.mark.slow
@pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))
def test_compare_view_screenshot(tmp_path):
    out = tmp_path / "compare.png"
    start = time.monotonic()
    runs = screenshot_compare_view(tmp_path / "none.db", tmp_path / "mlartifacts", out, tmp_path)
    assert sorted(r.data.params["model/name"] for r in runs) == sorted(DETECTORS)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert time.monotonic() - start < 900


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot the MLflow compare view of the demo detectors.")
    parser.add_argument("--store", default=str(ROOT / "mlruns.db"), help="SQLite MLflow store")
    parser.add_argument("--artifacts", default=str(ROOT / "mlartifacts"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "mlflow_compare.png"))
    parser.add_argument("--pages", default=None, help="also save the datasets panel and a sweep's parent run here")
    args = parser.parse_args(argv)
    reason = missing_tools()
    if reason:
        sys.exit(f"cannot take the screenshot: {reason}")
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as work:
        runs = screenshot_compare_view(Path(args.store).resolve(), Path(args.artifacts).resolve(), Path(args.out),
                                       Path(work))
    names = ", ".join(f"{r.data.params['model/name']} ({r.info.run_id[:8]})" for r in runs)
    print(f"saved {args.out}: compare view of {names}")
    if args.pages:
        with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as work:
            saved = screenshot_tracking_pages(Path(args.store).resolve(), Path(args.artifacts).resolve(),
                                              Path(args.pages), Path(work))
        print("saved " + ", ".join(str(p) for p in saved.values()))


if __name__ == "__main__":
    main()
