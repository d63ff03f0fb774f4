"""Plots of run directories, and of any curves: ``python -m mpisim.plot RUN_DIR... -o FIG.png``.

    python -m mpisim.plot results/run-a results/run-b --y test_accuracy --label aggregator.name -o acc.png
    python -m mpisim.plot results/cge-s* --x bytes -o bytes.png   # seeds merged: mean and min-max band

One curve per run directory (``config.toml`` + ``metrics.jsonl``, as every
protocol writes them through :mod:`mpisim.protocols.driver`). Runs whose
configurations differ only in ``run.seed`` (and in fields that never change
a result: ``run.name``, ``run.out_dir``, ``run.progress``,
``run.save_model``) are merged into one curve: the mean over the seeds at
every round, and a band from the lowest to the highest seed (``--band std``:
mean +- the sample standard deviation instead). A value that is missing or
not finite (a diverged run logs ``null``) leaves a gap in its curve, and is
left out of a mean over seeds.

The x axis is the round, the wall time (seconds since the first round,
evaluations included: the log's ``time``) or the bytes: by default the
uplink, that is what the agents sent (``agents_sent``: server and one-round
modes; the faulty agents' extra collective, ``adversary_sent``, is not in
it) or what the nodes sent (``nodes_sent``: decentralized mode), cumulative
since the first round; ``--bytes KEY`` picks another count (``server_sent``...).

The drawing half works without run directories: :class:`Series` (a label, x,
y, an optional band) and :func:`draw` / :func:`draw_panels`, which return
the matplotlib Figure and write the PNG atomically. matplotlib (the ``plot``
extra) is imported only when drawing, and nothing here imports MPI.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import config, metrics

__all__ = ["BANDS", "Metric", "Panel", "PlotError", "Run", "Series", "X_AXES", "Y_METRICS", "draw",
           "draw_panels", "group_by_seed", "load_run", "main", "mean_band", "plot_runs", "run_curves",
           "run_series", "save", "seed_series", "x_label"]


class PlotError(ValueError):
    """Input that cannot be plotted: a missing run directory, metric or config field, a bad output name."""


@dataclass(frozen=True)
class Metric:
    """A y quantity: its key in metrics.jsonl, its axis label (with units), how it is shown."""

    key: str
    label: str
    scale: float = 1.0   # shown as value * scale (fractions as percent)
    log: bool = False    # log y axis unless --linear


Y_METRICS = {
    "test_accuracy": Metric("test_accuracy", "test accuracy (%)", scale=100.0),
    "test_loss": Metric("test_loss", "test loss"),
    "train_loss": Metric("train_loss", "training loss (honest mean since the previous evaluation)"),
    "distance_to_optimum": Metric("distance_to_optimum", r"distance to the optimum $\|w - w^\star\|_2$",
                                  log=True),
    "consensus": Metric("consensus_distance", r"consensus distance $\max_j \|w_j - \bar w\|_2$ (honest nodes)",
                        log=True),
    "consensus_relative": Metric("consensus_relative",
                                 r"relative consensus distance $\max_j \|w_j - \bar w\|_2 / \|\bar w\|_2$",
                                 log=True),
}
X_AXES = ("round", "time", "bytes")
BANDS = {"minmax": "min-max over seeds", "std": "mean ± std over seeds"}

# Fields that never change what a run computes: ignored when grouping runs and choosing labels.
NOT_SETTINGS = ("run.name", "run.out_dir", "run.progress", "run.save_model")
SEED = "run.seed"
UPLINKS = ("agents_sent", "nodes_sent")  # what the learners send: server / one-round, decentralized
_ROLE_NOUN = {"agents": "the agents", "nodes": "the nodes", "server": "the server",
              "adversary": "the faulty agents' collusion"}


# ---------------------------------------------------------------- curves, with or without run directories


@dataclass(frozen=True, eq=False)
class Series:
    """One curve: ``y`` against ``x`` (1-D, same length; NaN leaves a gap), and an optional band
    ``(low, high)`` drawn shaded around it."""

    label: str
    x: np.ndarray
    y: np.ndarray
    band: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self):
        x, y = _floats(self.x), _floats(self.y)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"series {self.label!r}: x and y must be 1-D of one length, got shapes "
                             f"{x.shape} and {y.shape}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        if self.band is not None:
            low, high = (_floats(b) for b in self.band)
            if low.shape != x.shape or high.shape != x.shape:
                raise ValueError(f"series {self.label!r}: the band must have x's shape {x.shape}, got "
                                 f"{low.shape} and {high.shape}")
            object.__setattr__(self, "band", (low, high))


def _floats(values) -> np.ndarray:
    """Floats, None -> NaN."""
    return np.array([math.nan if v is None else v for v in np.asarray(values, dtype=object).ravel()],
                    dtype=np.float64).reshape(np.shape(values))


def _merge(keys: Sequence[np.ndarray], xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], *,
           band: str) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Mean x, mean y and the band of y over several curves, aligned on ``keys`` (their union).

    At every key, only the curves that have a finite value there count; a key
    where none has one gives NaN (a gap).
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    union = np.unique(np.concatenate([np.asarray(k, dtype=np.float64) for k in keys]))
    grid_x = np.full((len(keys), len(union)), math.nan)
    grid_y = np.full((len(keys), len(union)), math.nan)
    for row, (k, x, y) in enumerate(zip(keys, xs, ys)):
        at = np.searchsorted(union, np.asarray(k, dtype=np.float64))
        grid_x[row, at], grid_y[row, at] = x, y
    x_mean, _ = _mean_count(grid_x)
    y_mean, count = _mean_count(grid_y)
    if band == "minmax":
        low = np.where(count > 0, np.where(np.isfinite(grid_y), grid_y, np.inf).min(0), math.nan)
        high = np.where(count > 0, np.where(np.isfinite(grid_y), grid_y, -np.inf).max(0), math.nan)
    else:  # the sample standard deviation; 0 where only one curve has a value
        centred = np.where(np.isfinite(grid_y), grid_y - y_mean, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(count > 1, np.sqrt((centred ** 2).sum(0) / (count - 1)), 0.0)
        low, high = y_mean - std, y_mean + std
    return x_mean, y_mean, (low, high)


def _mean_count(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means over the finite entries (NaN where there is none), and their counts."""
    finite = np.isfinite(grid)
    count = finite.sum(0)
    total = np.where(finite, grid, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, math.nan), count


def mean_band(series: Sequence[Series], *, label: str, band: str = "minmax") -> Series:
    """One curve from several with the same x values (repeats of a setting, e.g. seeds): the mean
    of y at every x and a band, ``"minmax"`` (lowest to highest) or ``"std"`` (mean +- the sample
    standard deviation); missing and non-finite values are left out."""
    if not series:
        raise ValueError("mean_band needs at least one series")
    x, y, spread = _merge([s.x for s in series], [s.x for s in series], [s.y for s in series], band=band)
    return Series(label, x, y, spread)


# ---------------------------------------------------------------- run directories


@dataclass(frozen=True, eq=False)
class Run:
    """A run directory as read back: its resolved config (config.toml's tables) and its records."""

    path: Path
    config: Mapping[str, Any]
    records: tuple[dict, ...]

    @property
    def name(self) -> str:
        return self.path.name

    def settings(self) -> dict[str, Any]:
        """Every config field as ``section.field`` (tables flattened: ``aggregator.params.m``)."""
        return _flatten(self.config)

    def field(self, dotted: str) -> Any:
        """The value of config field ``section.field`` (or ``section.params.key``)."""
        node: Any = self.config
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, Mapping) or part not in node:
                where = ".".join(parts[:depth])
                have = ", ".join(node) if isinstance(node, Mapping) and node else "nothing"
                scope = f"[{where}] has" if where else "its sections are"
                raise PlotError(f"{self.path}: no config field {dotted!r} in config.toml ({scope}: {have})")
            node = node[part]
        return node

    def keys(self) -> list[str]:
        """The numeric quantities its records hold (``bytes.<role>_<direction>`` for the byte counts)."""
        seen: dict[str, None] = {}
        for record in self.records:
            for key, value in record.items():
                if isinstance(value, Mapping):
                    seen.update({f"{key}.{k}": None for k in value})
                elif key != "round":
                    seen[key] = None
        return list(seen)

    def has(self, key: str) -> bool:
        return key in self.keys()

    def values(self, key: str) -> np.ndarray:
        """``key`` of every record (``bytes.agents_sent`` reaches into a table); NaN where it is
        missing, null or not a number. PlotError if no record has it."""
        if key != "round" and not self.has(key):
            raise PlotError(f"{self.path}: no {key!r} in its metrics.jsonl (it has: {', '.join(self.keys())})")
        out = []
        for record in self.records:
            value: Any = record
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            out.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                       else math.nan)
        return np.array(out, dtype=np.float64)

    def uplink(self) -> str:
        """The byte count of what the learners send: ``agents_sent``, or ``nodes_sent``."""
        for key in UPLINKS:
            if self.has(f"bytes.{key}"):
                return key
        raise PlotError(f"{self.path}: no uplink byte count ({' or '.join(UPLINKS)}) in its metrics.jsonl "
                        f"(it has: {', '.join(self.keys())})")


def _flatten(tables: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tables.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def load_run(path: str | Path) -> Run:
    """Read a run directory (config.toml, metrics.jsonl; summary.json is not needed, so a run still
    going can be plotted). PlotError naming the directory for anything missing or unreadable."""
    path = Path(path)
    if not path.is_dir():
        raise PlotError(f"{path}: no such run directory")
    for name in ("metrics.jsonl", "config.toml"):
        if not (path / name).is_file():
            raise PlotError(f"{path}: no {name} (not a run directory of mpisim?)")
    try:
        tables = config.load_toml(path / "config.toml")
    except config.ConfigError as exc:
        raise PlotError(f"{path}: {exc}") from None
    try:
        records = metrics.read_jsonl(path / "metrics.jsonl")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PlotError(f"{path}: cannot read metrics.jsonl: {exc}") from None
    records = [r for r in records if isinstance(r, dict) and "round" in r]
    if not records:
        raise PlotError(f"{path}: metrics.jsonl has no evaluation yet")
    return Run(path, tables, tuple(records))


def _x_values(run: Run, x: str, bytes_key: str | None) -> np.ndarray:
    if x == "round":
        return run.values("round")
    if x == "time":
        return run.values("time")
    if x == "bytes":
        return run.values(f"bytes.{bytes_key or run.uplink()}")
    raise PlotError(f"unknown x axis {x!r} (one of {', '.join(X_AXES)})")


def _metric(y: str) -> Metric:
    if y not in Y_METRICS:
        raise PlotError(f"unknown metric {y!r} (one of {', '.join(Y_METRICS)})")
    return Y_METRICS[y]


def run_series(run: Run, *, x: str = "round", y: str = "test_accuracy", label: str | None = None,
               bytes_key: str | None = None) -> Series:
    """One run's curve of metric ``y`` (a name of :data:`Y_METRICS`) against ``x`` (round, time,
    bytes); points without an x value are dropped, missing y values leave gaps."""
    metric = _metric(y)
    xs, ys = _x_values(run, x, bytes_key), run.values(metric.key) * metric.scale
    keep = np.isfinite(xs)
    return Series(run.name if label is None else label, xs[keep], ys[keep])


def group_by_seed(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs in groups whose configs differ only in ``run.seed`` (and :data:`NOT_SETTINGS`),
    in the order each group first appears."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(_setting(run, ignore=(SEED, *NOT_SETTINGS)), []).append(run)
    return list(groups.values())


def _setting(run: Run, *, ignore: Sequence[str]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in run.settings().items() if k not in ignore))


def seed_series(group: Sequence[Run], *, x: str = "round", y: str = "test_accuracy", label: str,
                band: str = "minmax", bytes_key: str | None = None) -> Series:
    """One curve for a group of runs of one setting: the run's own curve for one run, else the mean
    over the runs at every round (of x too: time and bytes differ a little between seeds) with a
    band of y (``"minmax"`` or ``"std"``, see :func:`mean_band`)."""
    if len(group) == 1:
        return run_series(group[0], x=x, y=y, label=label, bytes_key=bytes_key)
    metric = _metric(y)
    keys = [run.values("round") for run in group]
    xs = [_x_values(run, x, bytes_key) for run in group]
    ys = [run.values(metric.key) * metric.scale for run in group]
    mx, my, spread = _merge(keys, xs, ys, band=band)
    keep = np.isfinite(mx)
    return Series(label, mx[keep], my[keep], (spread[0][keep], spread[1][keep]))


def run_curves(runs: Sequence[Run], *, x: str = "round", y: str = "test_accuracy",
               label: Sequence[str] = (), band: str = "minmax",
               bytes_key: str | None = None) -> tuple[list[Series], str | None]:
    """The curves of ``runs`` (seeds merged, see :func:`group_by_seed`) and the legend's title.

    Labels are the values of the config fields ``label`` (``section.field``),
    or by default of the fields that differ between the groups (at most 3;
    else, or if none differ, the run directory names). Labelling by
    ``run.seed`` keeps every seed a curve of its own.
    """
    _metric(y)
    for field in label:
        for run in runs:
            run.field(field)  # a field that is not there: the error names the run and the section
    groups = [[run] for run in runs] if SEED in label else group_by_seed(runs)
    fields = list(label) or _differing(groups)
    names = []
    for group in groups:
        head = group[0]
        text = ", ".join(_show(head.field(f)) for f in fields) if fields else ""
        if len(group) > 1:
            text = f"{text} ({len(group)} seeds)" if text else f"mean of {len(group)} seeds"
        names.append(text or head.name)
    if len(set(names)) < len(names):  # the given fields do not tell some curves apart
        names = [f"{name} [{group[0].name}]" for name, group in zip(names, groups)]
    series = [seed_series(g, x=x, y=y, label=name, band=band, bytes_key=bytes_key)
              for g, name in zip(groups, names)]
    title = ", ".join(fields) if fields else None
    if any(len(g) > 1 for g in groups):
        note = f"lines: mean over seeds; band: {BANDS[band]}"
        title = f"{title}\n{note}" if title else note
    return series, title


def _differing(groups: Sequence[Sequence[Run]], *, most: int = 3) -> list[str]:
    """The config fields whose values differ between the groups' first runs (none if more than ``most``)."""
    if len(groups) < 2:
        return []
    settings = [g[0].settings() for g in groups]
    keys = sorted({k for s in settings for k in s} - {SEED, *NOT_SETTINGS})
    differing = [k for k in keys if len({repr(s.get(k, "-")) for s in settings}) > 1]
    return differing if len(differing) <= most else []


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def x_label(runs: Sequence[Run], x: str, bytes_key: str | None = None) -> str:
    """The x axis label, with its unit; for bytes, whose bytes (the learners' uplink by default)."""
    if x == "round":
        return "round"
    if x == "time":
        return "wall time since the first round (s, evaluations included)"
    keys = sorted({bytes_key or run.uplink() for run in runs})
    roles = " / ".join(_ROLE_NOUN.get(k.rsplit("_", 1)[0], k.rsplit("_", 1)[0]) for k in keys)
    direction = {k.rsplit("_", 1)[-1] for k in keys}
    verb = "received by" if direction == {"received"} else "sent by"
    which = "uplink: " if bytes_key is None else ""
    return f"{which}bytes {verb} {roles}, cumulative"


# ---------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Panel:
    """One axes of :func:`draw_panels`: a title, its curves, optionally fixed limits (a zoom)."""

    title: str
    series: Sequence[Series]
    ylim: tuple[float, float] | None = None
    xlim: tuple[float, float] | None = None  # in the units shown (MB for bytes in MB)


def _figure(nrows: int, ncols: int, size: tuple[float, float], *, sharey: bool):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - the plot extra is missing
        raise PlotError("plots need matplotlib: pip install 'mpisim[plot]'") from None
    # A Figure of its own on the Agg canvas, not pyplot: no global state, no figure to close.
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False)
    return fig, axes


def _colours(series_lists: Sequence[Sequence[Series]]) -> dict[str, Any]:
    """One colour per label, the same in every panel."""
    from matplotlib import colormaps

    labels = list(dict.fromkeys(s.label for group in series_lists for s in group))
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _scale(series_lists: Sequence[Sequence[Series]], unit: str | None) -> tuple[float, str | None]:
    """A decimal prefix for a byte axis: (divisor, axis unit), from the largest x drawn."""
    if unit != "B":
        return 1.0, unit
    largest = max([float(np.nanmax(np.abs(s.x))) for group in series_lists for s in group
                   if np.isfinite(s.x).any()] or [0.0])
    for power, prefix in ((9, "GB"), (6, "MB"), (3, "kB")):
        if largest >= 10 ** power:
            return 10.0 ** power, prefix
    return 1.0, "B"


def _plot(ax, series: Sequence[Series], colours: Mapping[str, Any], *, divide: float, logy: bool,
          logx: bool = False) -> None:
    for s in series:
        colour = colours[s.label]
        x = s.x / divide
        marker = "o" if len(x) <= 40 else None  # few evaluations: show where they are
        ax.plot(x, s.y, label=s.label, color=colour, marker=marker, markersize=3, linewidth=1.5)
        if s.band is not None:
            ax.fill_between(x, s.band[0], s.band[1], color=colour, alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log", nonpositive="mask")
    if logx:
        ax.set_xscale("log", nonpositive="mask")
    ax.grid(True, alpha=0.3)


def _legend(fig, axes_list, title: str | None) -> None:
    handles, labels = [], []
    for ax in axes_list:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:  # below the axes: never over a curve; as many columns as the figure's width holds
        fits = int(fig.get_figwidth() * 13) // (max(len(label) for label in labels) + 6)
        fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(len(labels), fits)),
                   title=title, fontsize="small", title_fontsize="small", frameon=False)


def draw(series: Sequence[Series], *, xlabel: str, ylabel: str, out: str | Path | None = None,
         title: str | None = None, logy: bool = False, logx: bool = False, legend_title: str | None = None,
         xunit: str | None = None, size: tuple[float, float] = (7.0, 4.8), dpi: int = 120):
    """One axes with every series (band shaded), the legend below it; write ``out`` (a .png,
    atomically) if given. Returns the matplotlib Figure. ``xunit="B"`` shows bytes with a decimal
    prefix (kB, MB, GB) chosen from the data, named in the axis label."""
    return draw_panels([Panel(title or "", series)], xlabel=xlabel, ylabel=ylabel, out=out,
                       legend_title=legend_title, logy=logy, logx=logx, xunit=xunit, ncols=1, size=size,
                       dpi=dpi)


def draw_panels(panels: Sequence[Panel] | Mapping[str, Sequence[Series]], *, xlabel: str, ylabel: str,
                out: str | Path | None = None, title: str | None = None, logy: bool = False,
                logx: bool = False, legend_title: str | None = None, xunit: str | None = None, ncols: int = 3,
                sharey: bool = True, size: tuple[float, float] | None = None, dpi: int = 120):
    """A grid of axes, one per panel (a setting), ``ncols`` wide; a curve keeps its colour across
    panels (by label) and one legend below the grid lists them all. Returns the Figure; writes
    ``out`` (a .png, atomically) if given."""
    if isinstance(panels, Mapping):
        panels = [Panel(name, s) for name, s in panels.items()]
    if not panels:
        raise ValueError("nothing to draw: no panels")
    if out is not None:
        _check_png(out)
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    size = size or (4.2 * ncols, 3.2 * nrows + 1.0)
    fig, axes = _figure(nrows, ncols, size, sharey=sharey)
    lists = [p.series for p in panels]
    colours = _colours(lists)
    divide, unit = _scale(lists, xunit)
    shown_x = f"{xlabel} ({unit})" if unit else xlabel
    flat = axes.ravel()
    for ax, panel in zip(flat, panels):
        _plot(ax, panel.series, colours, divide=divide, logy=logy, logx=logx)
        if panel.title:
            ax.set_title(panel.title, fontsize="medium")
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        if panel.xlim is not None:
            ax.set_xlim(*panel.xlim)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(ylabel)
    for col in range(ncols):  # the x label under the lowest visible axes of every column
        visible = [axes[r, col] for r in range(nrows) if r * ncols + col < len(panels)]
        if visible:
            visible[-1].set_xlabel(shown_x)
    if title:
        fig.suptitle(title)
    _legend(fig, flat[:len(panels)], legend_title)
    if out is not None:
        save(fig, out, dpi=dpi)
    return fig


@dataclass
class HeatPanel:
    """One heatmap of :func:`heatmaps`: values[i][j] at row label ys[i], column label xs[j] (None: no value)."""

    title: str
    ys: Sequence[str]
    xs: Sequence[str]
    values: Sequence[Sequence[float | None]]


def heatmaps(out: str | Path, panels: Sequence[HeatPanel], *, ylabel: str, xlabel: str, scale: float = 1.0,
             colorbar: str = "", ncols: int = 3, dpi: int = 120):
    """Heatmaps side by side on one colour scale, every cell written with its value (times ``scale``,
    one decimal); a cell without a value is grey. Writes ``out`` (.png, atomically); returns the Figure."""
    if not panels:
        raise ValueError("nothing to draw: no panels")
    _check_png(out)
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    width = max(len(p.xs) for p in panels)
    fig, axes = _figure(nrows, ncols, (max(3.5, 0.9 * width + 1.8) * ncols, (0.45 * max(len(p.ys) for p in panels)
                                                                            + 1.6) * nrows), sharey=False)
    arrays = [np.array([[np.nan if v is None else v * scale for v in row] for row in p.values], dtype=float)
              for p in panels]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = None
    for ax, panel, values in zip(axes.ravel(), panels, arrays):
        masked = np.ma.masked_invalid(values)
        image = ax.imshow(masked, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto")
        ax.set_facecolor("0.85")
        ax.set_xticks(range(len(panel.xs)), panel.xs, rotation=30, ha="right")
        ax.set_yticks(range(len(panel.ys)), panel.ys)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel.title, fontsize="medium")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                dark = hi > lo and (v - lo) / (hi - lo) < 0.5
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="small",
                        color="white" if dark else "black")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel()[:len(panels)].tolist(), label=colorbar, shrink=0.9)
    save(fig, out, dpi=dpi)
    return fig


def _check_png(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PlotError(f"-o {out}: the output must be a .png file")
    if not out.parent.is_dir():
        raise PlotError(f"-o {out}: no such directory {out.parent}")
    return out


def save(fig, out: str | Path, *, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``out`` atomically (a reader never sees half a file)."""
    out = _check_png(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    metrics.atomic_write(out, buffer.getvalue())
    return out


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpisim.plot",
        description="One PNG of run directories: one curve per run, or per setting when runs differ "
                    "only in run.seed (the mean over the seeds, with a band).",
        epilog="x axes: round; time = seconds since the first round (evaluations included); bytes = "
               "cumulative uplink bytes (agents_sent in server and one-round mode, nodes_sent in "
               "decentralized mode) unless --bytes names another count. Exit code 2 on bad input.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (config.toml + metrics.jsonl)")
    parser.add_argument("--x", choices=X_AXES, default="round", help="x axis (default: round)")
    parser.add_argument("--y", choices=list(Y_METRICS), default="test_accuracy",
                        help="metric (default: test_accuracy; consensus: the decentralized mode's "
                             "consensus_distance)")
    parser.add_argument("--label", action="append", default=[], metavar="FIELD",
                        help="config field(s) naming the curves, section.field (repeat or comma-separate; "
                             "default: the fields that differ between the runs, else the directory names)")
    parser.add_argument("--band", choices=list(BANDS), default="minmax",
                        help="band around a mean over seeds: minmax (lowest to highest seed, the default) "
                             "or std (mean +- the sample standard deviation)")
    parser.add_argument("--bytes", dest="bytes_key", default=None, metavar="KEY",
                        help="with --x bytes: the byte count to use, e.g. server_sent (default: the uplink)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--logy", action=argparse.BooleanOptionalAction, default=None,
                        help="log y axis (default: on for distance_to_optimum and consensus)")
    parser.add_argument("-o", "--out", required=True, metavar="FIG.png", help="output PNG")
    return parser


def plot_runs(paths: Sequence[str | Path], *, out: str | Path, x: str = "round", y: str = "test_accuracy",
              label: Sequence[str] = (), band: str = "minmax", bytes_key: str | None = None,
              title: str | None = None, logy: bool | None = None):
    """What the command does: load, group, label, draw, write ``out``. Returns the Figure."""
    _check_png(out)
    runs = [load_run(p) for p in paths]
    series, legend_title = run_curves(runs, x=x, y=y, label=label, band=band, bytes_key=bytes_key)
    metric = Y_METRICS[y]
    return draw(series, xlabel=x_label(runs, x, bytes_key), ylabel=metric.label, out=out, title=title,
                logy=metric.log if logy is None else logy, legend_title=legend_title,
                xunit="B" if x == "bytes" else None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpisim.plot``: 0 on success, 2 (with one message on stderr) on bad input."""
    args = _parser().parse_args(argv)  # usage errors: argparse exits 2
    label = [f.strip() for item in args.label for f in item.split(",") if f.strip()]
    try:
        plot_runs(args.runs, out=args.out, x=args.x, y=args.y, label=label, band=args.band,
                  bytes_key=args.bytes_key, title=args.title, logy=args.logy)
    except PlotError as exc:
        print(f"mpisim.plot: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
