"""The documentation: the site builds with warnings as errors, its generated parts match the code, the
README stays a short first page, and the tutorial's files do what the tutorial says.

The generated parts come from docs/hooks/generate.py (the MkDocs hook); these tests import it and read
the Markdown it makes back, as a reader of the page would, rather than asking the registry twice.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorial"


def _load_hook():
    spec = importlib.util.spec_from_file_location("mpisim_docs_generate", DOCS / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_hook()


def _table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``markdown``, as lists of cells (pipes unescaped)."""
    rows = []
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    for line in lines[2:]:  # header and separator first
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    return rows


def _names(markdown: str) -> list[str]:
    """The first column of a generated table: the names, in code spans."""
    names = []
    for row in _table_rows(markdown):
        match = re.fullmatch(r"`([^`]+)`", row[0])
        assert match, f"a first cell that is not a `name`: {row[0]!r}"
        names.append(match.group(1))
    return names


def _pages() -> dict[str, str]:
    return {str(p.relative_to(DOCS)): p.read_text() for p in DOCS.rglob("*.md")}


# ---------------------------------------------------------------- the site


def test_site_builds_strict(tmp_path):
    # No skip without the tools: CI must build the site (launch/setup.sh installs the docs extra).
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "WARNING" not in result.stderr, result.stderr[-5000:]
    site = tmp_path / "site"
    # The generated parts reached the pages, and the figures came along.
    rules = (site / "components" / "rules" / "index.html").read_text()
    assert "mpisim:table" not in rules and "<code>cwtm</code>" in rules
    assert (site / "figures" / "cge_figures.png").is_file()
    assert "<code>run.seed</code>" in (site / "configuration" / "index.html").read_text()
    assert not (site / "hooks").exists()


# ---------------------------------------------------------------- the registry's tables


def test_every_kind_has_a_table_on_some_page():
    wanted = {match.group(1) for text in _pages().values()
              for match in re.finditer(r"^<!-- mpisim:table (\w+) -->$", text, re.MULTILINE)}
    assert wanted == set(generate.kinds()), "every kind of mpisim.registry.KINDS needs a marker, and only those"


@pytest.mark.parametrize("kind", sorted(generate.kinds()))
def test_table_lists_exactly_the_registry(kind):
    from mpisim import registry

    names = _names(generate.registry_table(kind))
    assert len(names) == len(set(names)), f"a name listed twice: {names}"
    assert set(names) == set(registry.KINDS[kind]), kind


def test_table_shows_parameters_and_properties():
    rows = {row[0]: row for row in _table_rows(generate.registry_table("attack"))}
    header = [line for line in generate.registry_table("attack").splitlines() if line.startswith("|")][0]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    alie = dict(zip(columns, rows["`alie`"]))
    assert "`z=None`" in alie["parameters (defaults)"] and "omniscient: yes" in alie["properties"]
    assert alie["reference"] != "-"


def test_a_new_entry_appears_in_the_table():
    import torch

    from mpisim import register, registry

    @register.rule("docs_test_rule", coordinatewise=True)
    def docs_test_rule(x: torch.Tensor, *, f: int, width: float = 2.0) -> torch.Tensor:
        """A rule that exists only in this test, with a | in its description."""
        return x.mean(dim=0)

    try:
        table = generate.registry_table("rule")
        assert "docs_test_rule" in _names(table)
        row = [r for r in _table_rows(table) if r[0] == "`docs_test_rule`"][0]
        assert "a | in its description" in row[1] and "`width=2.0`" in row[2]
    finally:
        registry.rules.remove("docs_test_rule")


def test_unknown_marker_is_an_error():
    with pytest.raises(ValueError, match="unknown marker"):
        generate.expand("<!-- mpisim:table no_such_kind -->\n")


# ---------------------------------------------------------------- the configuration reference


def test_configuration_reference_lists_every_field_of_every_mode():
    reference = generate.config_reference()
    modes = generate.modes()
    assert {"server", "decentralized", "one-round"} <= set(modes)
    # Split the page at the modes' headings, then each mode at its sections' headings.
    for command, (_module, config_class) in modes.items():
        part = reference.split(f"## `{command}`: ", 1)[1].split("\n## `", 1)[0]
        defaults = config_class()
        for section in dataclasses.fields(config_class):
            block = part.split(f"### `[{section.name}]` ({command})", 1)[1].split("\n### ", 1)[0]
            rows = {row[0]: row for row in _table_rows(block)}
            values = getattr(defaults, section.name)
            fields = dataclasses.fields(values)
            assert set(rows) == {f"`{section.name}.{f.name}`" for f in fields}, (command, section.name)
            for f in fields:
                assert rows[f"`{section.name}.{f.name}`"][3], f"{command}: {section.name}.{f.name} has no help"
    # The defaults are the mode's own: the sections are shared, their defaults are not.
    assert "| `data.batch_size` | `int` | `16` |" in reference.split("## `decentralized`")[0]
    assert "| `data.batch_size` | `int` | `0` |" in reference.split("## `decentralized`")[1]


# ---------------------------------------------------------------- the README


def test_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    sections = re.split(r"^## ", readme, flags=re.MULTILINE)
    first = sections[1]
    assert first.startswith("Two commands\n")
    block = re.search(r"```bash\n(.*?)```", first, re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["./launch/run.sh", "./launch/test.sh"]
    # CI runs exactly the README's test command.
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec \./launch/test\.sh\s*$", ci, re.MULTILINE), ci


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target


# ---------------------------------------------------------------- the tutorial's files


def test_tutorial_plugin_passes_the_test_kit():
    result = subprocess.run([sys.executable, "-m", "mpisim.testing", "rule", "median_clip", "--run.plugins",
                             str(TUTORIAL / "median_clip.py")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sharded (whole-row sums)         held" in result.stdout


def test_tutorial_sweep_checks_its_cells(tmp_path):
    env = {**os.environ, "MPISIM_RESULTS": str(tmp_path)}
    result = subprocess.run([sys.executable, str(TUTORIAL / "sweep_median_clip.py"), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "16 jobs checked" in result.stdout
    listing = subprocess.run([sys.executable, str(TUTORIAL / "sweep_median_clip.py"), "--list-cells"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=env)
    assert listing.returncode == 0 and listing.stdout.startswith("16 cells, 3 ranks each"), listing.stdout
