"""Users' plugins: files or modules that register components, imported before the configuration is checked.

``run.plugins`` lists ``.py`` files (a path, relative to the working
directory where the job starts) or importable module names
(``mypkg.attacks``); installed packages may also declare the entry-point
group ``mpisim.plugins``. Every rank imports them, in order, before the
configuration is validated, so a plugin's rule is checked exactly like a
built-in one; each is imported once per process.

What can go wrong is a :class:`PluginError` naming the plugin: a missing
file, a syntax error (with its line), an exception raised while importing,
or a name its components share with a built-in or another plugin. The
driver turns it into a config error on ``run.plugins`` (exit 2 on every
rank, before any work). A run records each plugin's file and SHA-256
(config.toml's ``run.plugin_sha256``, summary.json's ``plugins``); a
resumed run imports them again and refuses one whose file changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from . import registry

__all__ = ["Plugin", "PluginError", "load", "loaded", "resolve", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "mpisim.plugins"


class PluginError(Exception):
    """A plugin that cannot be used; the message starts with the plugin as the user named it."""


@dataclass(frozen=True)
class Plugin:
    """One imported plugin: as named in the config, the file it came from, and that file's SHA-256."""

    spec: str
    path: str
    sha256: str


_loaded: dict[str, Plugin] = {}


def is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def resolve(spec: str) -> str:
    """A file plugin as an absolute path (so that a resumed run, started elsewhere, finds it);
    a module name as it is."""
    return str(Path(spec).expanduser().resolve()) if is_file(spec) else spec


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import_file(spec: str) -> str:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise PluginError(f"{spec}: no such file" if not path.exists() else f"{spec}: not a file")
    # A module name of its own, so that two plugin files called the same do not collide.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"mpisim_plugin_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return str(path.resolve())


def _import_module(spec: str) -> str:
    module = importlib.import_module(spec)
    return getattr(module, "__file__", None) or ""


def load(specs: list[str] | tuple[str, ...]) -> list[Plugin]:
    """Import ``specs`` (then the ``mpisim.plugins`` entry points), each once per process; the
    plugins, in order. Raises :class:`PluginError` naming the first one that fails."""
    out = []
    for spec in [*specs, *_entry_point_specs()]:
        if spec in _loaded:
            out.append(_loaded[spec])
            continue
        try:
            with registry.origin(spec):
                path = _import_file(spec) if is_file(spec) else _import_module(spec)
        except PluginError:
            raise
        except SyntaxError as exc:
            raise PluginError(f"{spec}: syntax error at line {exc.lineno}: {exc.msg}") from None
        except registry.RegistryError as exc:
            raise PluginError(f"{spec}: {exc}") from None
        except ModuleNotFoundError as exc:
            if exc.name == spec or spec.startswith(f"{exc.name}."):
                raise PluginError(f"{spec}: no such module (neither a .py file nor importable)") from None
            raise PluginError(f"{spec}: importing it raised ModuleNotFoundError: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any failure of a user's code is reported, named
            raise PluginError(f"{spec}: importing it raised {type(exc).__name__}: {exc}") from None
        plugin = Plugin(spec, path, _sha256(path) if path else "")
        _loaded[spec] = plugin
        out.append(plugin)
    return out


def _entry_point_specs() -> list[str]:
    """Modules that installed packages declare in the ``mpisim.plugins`` entry-point group."""
    return [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def loaded() -> list[Plugin]:
    """Every plugin this process has imported, in order."""
    return list(_loaded.values())


def changed(recorded: dict[str, str]) -> list[str]:
    """Messages for the plugins whose file's SHA-256 differs from ``recorded`` (spec -> hex)."""
    out = []
    for spec, before in recorded.items():
        plugin = _loaded.get(spec)
        now = plugin.sha256 if plugin else None
        if now != before:
            out.append(f"{spec} changed since the run started (SHA-256 {before[:12]}... then, "
                       f"{(now or 'not loaded')[:12]}... now)")
    return out


def configure(cfg):
    """``cfg`` with ``run.plugins`` imported (files made absolute) and their SHA-256 recorded in
    ``run.plugin_sha256``; a resumed run refuses a plugin whose file changed since the run started.
    Raises :class:`mpisim.config.ConfigError` (field ``run.plugins``). Every rank calls it before
    validating, and so does ``mpisim sweep`` before it checks its cells."""
    import dataclasses

    from .config import ConfigError

    specs = tuple(resolve(spec) for spec in cfg.run.plugins)
    try:
        imported = load(specs)
    except PluginError as exc:
        raise ConfigError("run.plugins", str(exc)) from None
    if cfg.run.resume:
        problems = changed(dict(cfg.run.plugin_sha256))
        if problems:
            raise ConfigError("run.plugins", f"{'; '.join(problems)}: a resumed run goes on with the code it "
                                             f"started with")
    hashes = {plugin.spec: plugin.sha256 for plugin in imported}
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, plugins=specs, plugin_sha256=hashes))
