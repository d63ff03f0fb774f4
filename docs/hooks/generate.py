"""MkDocs hook: the pages' generated parts, made from the code at build time, never kept by hand.

A page asks for a generated part with a marker on a line of its own:

    <!-- mpisim:table KIND -->     the registry's entries of KIND (rule, attack, codec...)
    <!-- mpisim:config -->         every mode's configuration, section by section
    <!-- mpisim:commands -->       the subcommands of the ``mpisim`` command

The same functions are imported by tests/test_docs.py, which checks the
tables against the registry. The figures of benchmarks/results/ are added
to the site as figures/NAME.png, so pages show the files the benchmarks
wrote rather than copies.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- mpisim:(\w+)(?: (\w+))? -->$", re.MULTILINE)

# What a kind's entries are called on its config line, for the sentence above its table.
CONFIG_KEY = {"rule": "aggregator.name", "pre_aggregator": "aggregator.pre", "attack": "byzantine.fault",
              "screening": "screening.name", "codec": "compression.codec", "model": "model.name",
              "dataset": "data.name", "partition": "data.partition"}


def modes() -> dict[str, tuple[str, Any]]:
    """The commands that run a protocol: subcommand -> (module, the mode's config class).

    Importing the modes also registers every built-in component, so this
    runs before any table is made.
    """
    from mpisim.cli import COMMANDS

    out = {}
    for command, (module, _summary) in COMMANDS.items():
        protocol = getattr(importlib.import_module(module).main, "protocol", None)
        if protocol is not None:
            out[command] = (module, protocol.config_class)
    return out


def kinds() -> Mapping[str, Any]:
    """``mpisim.registry.KINDS`` with every built-in registered."""
    import mpisim.register  # noqa: F401  (the decorators' modules: rules, attacks, codecs, models...)

    modes()
    from mpisim import registry

    return registry.KINDS


def _cell(text: Any) -> str:
    """One table cell: a single line, with its pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    text = str(value)
    # A path inside the project is shown from the project's root, not from the machine that built the site.
    return text[len(str(ROOT)) + 1:] if text.startswith(str(ROOT) + "/") else text


def _description(entry) -> str:
    """The entry's description; when it is the first line of a sentence that its docstring's first
    paragraph goes on with (it ends in "," or ":"), that whole paragraph."""
    text = entry.description.strip()
    doc = inspect.getdoc(entry.obj) or ""
    paragraph = doc.split("\n\n")[0]
    if text.endswith((",", ":", ";")) and paragraph.startswith(text):
        return " ".join(paragraph.split())
    return text


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"`{name}={value!r}`" for name, value in params.items()) or "none"


def _properties(properties: Mapping[str, Any]) -> str:
    # Functions among the properties (a pre-aggregator's ``out``) say nothing in a table.
    shown = [f"{key}: {_value(value)}" for key, value in properties.items() if not callable(value)]
    return ", ".join(shown) or "-"


def registry_table(kind: str) -> str:
    """The Markdown table of the registered entries of ``kind``, in registration order.

    The first column is the name a configuration gives; a column that no entry fills
    (no parameters, properties or reference anywhere) is left out.
    """
    registry = kinds()[kind]
    entries = registry.entries()
    if not entries:
        return f"No {registry.plural} are registered in `mpisim.registry` yet.\n"
    key = CONFIG_KEY.get(kind)
    columns = {"name": [f"`{e.name}`" for e in entries],
               "description": [_cell(_description(e)) for e in entries],
               "parameters (defaults)": [_cell(_params(e.params)) for e in entries],
               "properties": [_cell(_properties(e.properties)) for e in entries],
               "reference": [_cell(e.reference) or "-" for e in entries]}
    empty = {"parameters (defaults)": "none", "properties": "-", "reference": "-"}
    columns = {title: cells for title, cells in columns.items()
               if title not in empty or any(cell != empty[title] for cell in cells)}
    lines = [f"{len(entries)} registered {registry.plural}" + (f", the values of `{key}`" if key else "") +
             " (made from `mpisim.registry` when this site was built):", "",
             "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in zip(*columns.values())]
    return "\n".join(lines) + "\n"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _default(value: Any) -> str:
    if isinstance(value, Mapping):
        value = dict(value)
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def config_sections(config_class: type) -> dict[str, list[tuple[str, str, str, str]]]:
    """{section: [(field, type, default, help)]} of a mode's config class, defaults as the mode sets them."""
    defaults = config_class()
    sections = typing.get_type_hints(config_class)
    out = {}
    for section in dataclasses.fields(config_class):
        section_class = sections[section.name]
        hints = typing.get_type_hints(section_class)
        values = getattr(defaults, section.name)
        out[section.name] = [(fld.name, _type_name(hints[fld.name]), _default(getattr(values, fld.name)),
                              fld.metadata.get("help", "")) for fld in dataclasses.fields(section_class)]
    return out


def config_reference() -> str:
    """For every mode, a table per section of its configuration: field, type, default, help."""
    parts = []
    for command, (module, config_class) in modes().items():
        parts += [f"## `{command}`: `python -m {module}`", "",
                  f"`mpisim {command}`, configuration class `{config_class.__name__}`.", ""]
        hints = typing.get_type_hints(config_class)
        for section, rows in config_sections(config_class).items():
            doc = " ".join((hints[section].__doc__ or "").split()).partition(": ")[2]
            parts += [f"### `[{section}]` ({command})", ""] + ([_cell(doc), ""] if doc else [])
            parts += ["| field | type | default | what it is |", "| --- | --- | --- | --- |"]
            parts += [f"| `{section}.{name}` | `{_cell(kind)}` | `{_cell(default)}` | {_cell(text)} |"
                      for name, kind, default, text in rows]
            parts.append("")
    return "\n".join(parts)


def commands_table() -> str:
    """The subcommands of ``mpisim`` (``mpisim.cli.COMMANDS``)."""
    from mpisim.cli import COMMANDS

    lines = ["| command | the same as | what it does |", "| --- | --- | --- |"]
    lines += [f"| `mpisim {name}` | `python -m {module}` | {_cell(summary)} |"
              for name, (module, summary) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def expand(markdown: str) -> str:
    """The page with every marker replaced by what it asks for; an unknown marker is an error."""
    def replace(match: re.Match) -> str:
        what, arg = match.group(1), match.group(2)
        if what == "table" and arg in kinds():
            return registry_table(arg)
        if what == "config" and arg is None:
            return config_reference()
        if what == "commands" and arg is None:
            return commands_table()
        raise ValueError(f"unknown marker {match.group(0)!r}; kinds: {', '.join(kinds())}")

    return MARKER.sub(replace, markdown)


# ---------------------------------------------------------------- MkDocs events


def on_files(files, config):
    from mkdocs.structure.files import File

    for path in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand(markdown)


# Sphinx roles in the docstrings (:func:`rule`, :class:`Entry`) come out of Markdown as
# ":func:<code>rule</code>"; the API reference shows the code alone.
ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html, page, config, files):
    return ROLE.sub("", html)
