"""The docs: committed diagrams match the charts, examples run, the site builds strictly."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_diagrams", ROOT / "scripts" / "gen_diagrams.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_diagrams_match_the_charts() -> None:
    """Fails when a chart changed and its diagrams were not regenerated."""
    stale = generator().drifted()
    assert stale == [], (
        f"out of date in docs/diagrams/: {', '.join(stale)}; "
        "run: python scripts/gen_diagrams.py (needs Graphviz for the SVGs)"
    )


def test_the_drift_check_notices_a_changed_chart(tmp_path: Path) -> None:
    gen = generator()
    shutil.copy(gen.OUT / gen.TRACE, tmp_path / gen.TRACE)
    for name, text in gen.text_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    for name in gen.CHARTS:
        marker = gen.svg_marker(gen.to_dot(gen.shipped_chart(name)))
        (tmp_path / f"{name}.svg").write_text(f"<?xml?>\n{marker}\n<svg/>\n", encoding="utf-8")
    gen.OUT = tmp_path
    assert gen.drifted() == []
    (tmp_path / "worker.mmd").write_text("stateDiagram-v2\n")
    svg = tmp_path / "modeller.svg"
    svg.write_text(svg.read_text().replace("drawn from DOT sha256 ", "drawn from DOT sha256 0"))
    assert gen.drifted() == ["worker.mmd", "modeller.svg"]


# ------------------------------------------------------------------ the guide


def examples(page: Path) -> list[tuple[str, str | None]]:
    """Each ```python block of a page, with the ```text block right after it, if any."""
    pattern = re.compile(r"```python\n(.*?)```\n(?:\n```text\n(.*?)```)?", re.S)
    return [(code, output) for code, output in pattern.findall(page.read_text(encoding="utf-8"))]


# Pages whose examples run here; docs/charts.md is checked by its own tests.
EXAMPLES = [
    (page, index, code, output)
    for page in ("guide.md", "semantics.md")
    for index, (code, output) in enumerate(examples(DOCS / page))
]


@pytest.mark.parametrize(
    ("page", "index", "code", "output"),
    EXAMPLES,
    ids=[f"{page}-{index + 1}" for page, index, _, _ in EXAMPLES],
)
def test_examples_run_and_print_what_the_page_shows(
    page: str,
    index: int,
    code: str,
    output: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs/{page} example {index + 1}", "exec"), {"__name__": "docs"})
    printed = capsys.readouterr().out
    if output:
        assert printed == output


def test_the_guide_has_its_examples() -> None:
    assert sum(page == "guide.md" for page, *_ in EXAMPLES) >= 4


# ------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built once with ``mkdocs build --strict``."""
    pytest.importorskip("mkdocs", reason="install the test extra: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_docs_build_strictly(site: Path) -> None:
    """``mkdocs build --strict``: a broken link, anchor or docstring fails the build."""
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "run_task" in api and "load_chart" in api
    assert (site / "diagrams" / "worker.svg").is_file()


@pytest.mark.parametrize("name", ["worker", "modeller"])
def test_chart_pages_draw_the_chart_inline_at_full_size_with_tooltips(
    site: Path, name: str
) -> None:
    """Inline (not an <img>), unscaled, in a pan/zoom frame, descriptions on hover."""
    from lxml import html as lxml_html

    from fsm_protocol import shipped_chart

    page = lxml_html.parse(str(site / "diagrams" / "index.html")).getroot()
    assert not page.xpath(f'//img[contains(@src, "{name}.svg")]')
    (chart_div,) = page.xpath(f'//div[@class="fsm-chart"][@data-svg="diagrams/{name}.svg"]')
    (svg,) = chart_div.xpath('.//*[local-name()="svg"]')
    committed = (DOCS / "diagrams" / f"{name}.svg").read_text(encoding="utf-8")
    width = re.search(r'<svg width="([0-9.]+pt)"', committed)
    assert width is not None and svg.get("width") == width.group(1)
    assert chart_div.xpath('.//button[@data-zoom="in"]') and chart_div.xpath(
        './/button[@data-zoom="out"]'
    )
    assert page.xpath('//script[contains(@src, "js/chart-zoom.js")]')
    titles = {t.text for t in svg.xpath('.//*[local-name()="title"]')}
    chart = shipped_chart(name)
    for state in chart.states:
        if state.description:
            assert state.description in titles, state.name


# ------------------------------------------------------------- the API reference


def test_the_api_reference_lists_every_public_name_and_every_field(site: Path) -> None:
    import attrs

    import fsm_protocol
    import fsm_protocol.conformance
    import fsm_protocol.testing

    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', page))
    for module in (fsm_protocol, fsm_protocol.conformance, fsm_protocol.testing):
        for name in module.__all__:
            path = f"{module.__name__}.{name}"
            assert path in ids, f"{path} has no entry in the API reference"
            value = getattr(module, name)
            if isinstance(value, type) and attrs.has(value):
                for field in attrs.fields(value):
                    if not field.name.startswith("_"):
                        assert f"{path}.{field.name}" in ids, f"{path}.{field.name} is not listed"
    # Sphinx roles became links (or code), and every link on the page lands on an entry.
    assert not re.search(r":(func|class|meth|attr|data|mod|exc):", page)
    targets = set(re.findall(r'href="#(fsm_protocol[^"]*)"', page))
    assert targets and targets <= ids, sorted(targets - ids)
    assert 'href="#fsm_protocol.load_chart"' in page


def test_a_broken_reference_fails_the_strict_build(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="install the test extra: pip install -e '.[test]'")
    for name in ("fsm_protocol", "scripts", "statecharts"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    api = tmp_path / "docs" / "api.md"
    api.write_text(
        api.read_text(encoding="utf-8") + "\nSee [`gone`][fsm_protocol.no_such_name].\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode != 0
    assert "fsm_protocol.no_such_name" in done.stderr
