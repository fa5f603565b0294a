"""The DVC views people read (`dvc plots`, `dvc exp show`) as dvc.yaml declares them: every top-level plot
is titled and labelled and draws a stage output, nothing disables the run-cache, and the `dvc plots` pages
carry their own Vega libraries (.dvc/plots.html, built by gain/evaluation/plots_template.py)."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gain.evaluation.plots_template import PACKAGES, library, npm_pack
from gain.evaluation.plots_template import main as build_template
from gain.runtime import layout
from gain.runtime.codebase import REPO
from tests.pipeline_utils import dvc

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_top_level_plots_are_labelled_and_draw_the_layouts_plot_data():
    drawn = set()
    for entry in DVC["plots"]:
        ((name, props),) = entry.items()
        assert props.get("title") and props.get("x_label") and props.get("y_label"), name
        assert isinstance(props["y"], dict), f"{name}: name the file its fields come from"
        drawn |= {Path(f) for f in props["y"]}
    plot_data = {p for paths in layout.PLOT_DATA.values() for p in paths}
    assert drawn == plot_data
    for stage, paths in layout.PLOT_DATA.items():
        assert set(paths) <= set(layout.OUTPUTS[stage]["outs"]), stage


def test_no_uncached_plain_out_turns_the_run_cache_off():
    """DVC skips the run-cache of a stage with a `cache: false` out that is neither a metric nor a plot."""
    for name, stage in DVC["stages"].items():
        for out in stage.get("outs", []):
            options = next(iter(out.values())) if isinstance(out, dict) else {}
            assert options.get("cache", True), f"{name}: {out}"


# --- `dvc plots show` pages work offline ---------------------------------------------------------------

TEMPLATE = REPO / ".dvc" / "plots.html"
NETWORK = re.compile(
    r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.I
)


def plot_specs(page: str) -> list[dict]:
    """The Vega(-Lite) specs a DVC page hands to vegaEmbed."""
    found = re.findall(r"var spec = (\{.*?\});\s*vegaEmbed\(", page, flags=re.S)
    return [json.loads(s) for s in found]


def fake_plot_data(repo: Path) -> None:
    """A few rows for every CSV the top-level plots draw, with the columns they name."""
    columns: dict[str, set[str]] = {}
    for entry in DVC["plots"]:
        ((_, props),) = entry.items()
        for path, ys in props["y"].items():
            ys = ys if isinstance(ys, list) else [ys]
            columns.setdefault(path, set()).update([props["x"], *ys])
    for path, cols in columns.items():
        cols = sorted(cols)
        rows = [",".join(cols)] + [",".join(str(i + j) for j in range(len(cols))) for i in range(3)]
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("\n".join(rows) + "\n")


def test_the_plots_template_is_the_default_and_loads_nothing_from_the_network():
    text = TEMPLATE.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text  # DVC puts its CDN tags where {scripts} is
    assert not NETWORK.search(text) and "cdn." not in text
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert (REPO / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE.resolve()
    assert TEMPLATE.stat().st_size < 3_000_000


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """`dvc plots show` in a repository with this project's .dvc/config, template and top-level plots.
    -> the page DVC wrote."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    (repo / ".dvc").mkdir(parents=True)
    for name in ("config", "plots.html"):
        shutil.copyfile(REPO / ".dvc" / name, repo / ".dvc" / name)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": DVC["plots"]}, sort_keys=False))
    fake_plot_data(repo)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "plots", "show", "-o", "out")
    return repo / "out" / "index.html"


def test_plots_show_writes_an_offline_page_with_the_libraries_and_every_plot(plots_page):
    page = plots_page.read_text()
    assert not NETWORK.search(page), NETWORK.search(page)
    for name, version, _, _ in PACKAGES:
        start = page.index(f"/* {name} {version} */")
        assert page.index("</script>", start) - start > 50_000, name  # the whole library, inline
    specs = plot_specs(page)
    drawn = {s["title"]["text"] if isinstance(s["title"], dict) else s["title"] for s in specs}
    assert drawn == {next(iter(entry.values()))["title"] for entry in DVC["plots"]}
    assert all(s["data"]["values"] for s in specs)


def test_a_headless_browser_without_network_draws_every_plot(plots_page):
    """Rendered by Chromium with every network request sent to a closed port: each plot becomes a canvas."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    offline = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", *offline]
    res = subprocess.run(
        [browser, *flags, "--virtual-time-budget=10000", "--dump-dom", plots_page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    canvases = re.findall(r'<canvas[^>]*class="marks"', res.stdout)
    assert len(canvases) == len(plot_specs(plots_page.read_text())) == len(DVC["plots"])


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path):
    name, version, expected, member = PACKAGES[0]
    fake = tmp_path / f"{name}-{version}.tgz"
    fake.write_bytes(b"not the registry's tarball")
    with pytest.raises(SystemExit, match="is not the pinned"):
        library(fake, expected, member)


@pytest.mark.e2e
def test_the_template_is_rebuilt_byte_for_byte_from_the_npm_registry(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    try:
        npm_pack(tmp_path)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"npm pack failed (no registry?): {e}")
    build_template(["--from", str(tmp_path), "--out", str(tmp_path / "plots.html")])
    assert (tmp_path / "plots.html").read_bytes() == TEMPLATE.read_bytes()
