"""What a run leaves behind: ``results.json``, ``results.md`` and PNG charts."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._core import Figure

TITLES = {
    "pairs": "One task, 1 KiB sessions: operations per second (a write, then a read)",
    "sessions": "Operations per second vs sessions stored (1 KiB each, one task)",
    "payload": "Operations per second vs payload size (one task)",
    "concurrency": "Operations per second vs concurrent tasks (1 KiB sessions)",
    "footprint": "Memory per stored session (bytes), by payload size",
    "lateness p99": "Event-loop lateness under load: a 1 ms heartbeat's p99 (ms)",
    "lateness max": "Event-loop lateness under load: a 1 ms heartbeat's worst (ms)",
}
#: Goal for MemoryStorage: bytes per stored 1 KiB session.
FOOTPRINT_GOAL = 1300


def number(value: float, unit: str = "") -> str:
    if unit == "ms":
        return f"{value:.3g}" if value < 100 else f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def size(value: float | None) -> str:
    if value is None:
        return ""
    value = int(value)
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale and value % scale == 0:
            return f"{value // scale} {unit}"
    return f"{value:,} B"


def x_label(section: str, x: float | None) -> str:
    if x is None:
        return ""
    if section in ("payload", "footprint"):
        return size(x)
    if section == "sessions":
        return f"{int(x):,}"
    return f"{int(x)}"


def ratio(figure: Figure) -> str:
    return "" if figure.ratio is None else f"{figure.ratio:.2f}x"


def cell(figure: Figure) -> str:
    low, high = min(figure.values), max(figure.values)
    spread = (
        ""
        if len(figure.values) == 1
        else f" [{number(low, figure.unit)}-{number(high, figure.unit)}]"
    )
    text = number(figure.median, figure.unit) + spread
    return f"{text} {ratio(figure)}".rstrip()


# ------------------------------------------------------------------- Markdown


def _find(
    figures: Sequence[Figure], section: str, name: str, x: float | None = None
) -> Figure | None:
    for figure in figures:
        if figure.section == section and figure.name == name and figure.x == x:
            return figure
    return None


def summary(figures: Sequence[Figure], plan: dict[str, Any]) -> list[str]:
    """One row per storage of ours: its headline figures and their ratios."""
    tasks = 64 if 64 in plan["concurrency"] else max(plan["concurrency"])
    rows = [
        "| storage | 1 task, ops/s (ratio) | "
        f"{tasks} tasks, ops/s (ratio) | heartbeat p99 / worst, ms | bytes per 1 KiB session |",
        "|---|---|---|---|---|",
    ]
    names = sorted(
        {f.name for f in figures if f.role == "subject" and f.section != "footprint"},
        key=lambda name: [f.name for f in figures].index(name),
    )
    for name in names:
        one = _find(figures, "pairs", name)
        many = _find(figures, "concurrency", name, float(tasks))
        p99 = _find(figures, "lateness p99", name)
        worst = _find(figures, "lateness max", name)
        memory = _find(figures, "footprint", f"{name} (ttl)", 1024.0)
        late = f"{number(p99.median, 'ms')} / {number(worst.median, 'ms')}" if p99 and worst else ""
        rows.append(
            f"| {name} | {_short(one)} | {_short(many)} | {late} | "
            f"{number(memory.median) + ' ' + ratio(memory) if memory else ''} |"
        )
    return rows


def _short(figure: Figure | None) -> str:
    if figure is None:
        return ""
    return f"{number(figure.median)} ({ratio(figure)})" if figure.ratio else number(figure.median)


def markdown(data: dict[str, Any], figures: Sequence[Figure]) -> str:
    machine = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    lines = [
        "# trio-sessions benchmark results",
        "",
        f"`{data['command']}` ({data['mode']} run), {data['started']}, {data['seconds']:.0f} s.",
        "",
        f"Machine: {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['cpu']}, {(machine['memory_bytes'] or 0) / 2**30:.0f} GiB, "
        f"{machine['platform']}, Python {machine['python']}. Load average (1, 5, 15 min) "
        f"{machine['load_average_start']} at the start, {machine['load_average_end']} at the end.",
        "",
        f"Versions: {versions}. Redis server: {machine.get('redis_server') or 'none'}; "
        f"{machine.get('redis_benchmark') or 'no redis-benchmark'}. "
        f"PostgreSQL server: {machine.get('postgres_server') or 'none'}.",
        "",
        "Each cell: the median over the repeats, [min-max], and the ratio of the median to "
        "the baseline's median measured in the same run (the baseline is named in each "
        "table). Operations per second: higher is better; ms and bytes: lower is better.",
        "",
        "## Summary",
        "",
        *summary(figures, data["plan"]),
    ]
    for section, title in TITLES.items():
        chosen = [f for f in figures if f.section == section]
        if not chosen:
            continue
        xs = sorted({f.x for f in chosen if f.x is not None})
        lines += ["", f"## {title}", ""]
        if not xs:
            lines += ["| group | candidate | role | median [min-max] | baseline | ratio |"]
            lines += ["|---|---|---|---|---|---|"]
            for f in chosen:
                low, high = number(min(f.values), f.unit), number(max(f.values), f.unit)
                lines.append(
                    f"| {f.group} | {f.name} | {f.role} | {number(f.median, f.unit)} "
                    f"[{low}-{high}] | {f.baseline or ''} | {ratio(f)} |"
                )
            continue
        header = " | ".join(x_label(section, x) for x in xs)
        lines += [f"| group | candidate | baseline | {header} |"]
        lines += ["|---|---|---|" + "---|" * len(xs)]
        rows: dict[tuple[str, str], dict[float, Figure]] = {}
        for f in chosen:
            assert f.x is not None
            rows.setdefault((f.group, f.name), {})[f.x] = f
        for (group, name), by_x in rows.items():
            baseline = next(iter(by_x.values())).baseline or ""
            cells = " | ".join(cell(by_x[x]) if x in by_x else "" for x in xs)
            lines.append(f"| {group} | {name} | {baseline} | {cells} |")
    if data["skipped"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {item['what']}: {item['why']}" for item in data["skipped"]]
    return "\n".join(lines) + "\n"


def write(directory: Path, data: dict[str, Any], figures: Sequence[Figure]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (directory / "results.md").write_text(markdown(data, figures))


# --------------------------------------------------------------------- charts

COLORS = {
    "subject": "tab:blue",
    "baseline": "tab:gray",
    "peer": "tab:orange",
    "reference": "tab:green",
}


def charts(directory: Path, figures: Sequence[Figure]) -> list[str]:
    """Draw one PNG per section; return their file names. Needs matplotlib."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    made = []
    for section, draw in (
        ("pairs", _bars),
        ("sessions", _curves),
        ("payload", _curves),
        ("concurrency", _curves),
        ("footprint", _footprint),
        ("lateness", _lateness),
    ):
        chosen = [f for f in figures if f.section.startswith(section)]
        if not chosen:
            continue
        fig = draw(plt, section, chosen)
        name = f"{section}.png"
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def _errors(figures: Sequence[Figure]) -> list[list[float]]:
    return [
        [f.median - min(f.values) for f in figures],
        [max(f.values) - f.median for f in figures],
    ]


def _bars(plt: Any, section: str, figures: Sequence[Figure]) -> Any:
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(figures) + 1.4))
    labels = [f"{f.name}  [{f.group}]" for f in figures][::-1]
    ordered = list(figures)[::-1]
    ax.barh(
        labels,
        [f.median for f in ordered],
        xerr=_errors(ordered),
        color=[COLORS[f.role] for f in ordered],
        capsize=2,
    )
    for y, f in enumerate(ordered):
        ax.text(f.median * 1.08, y, f"{number(f.median)} {ratio(f)}", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("operations per second (log scale; bars: median, whiskers: min-max)")
    ax.set_title(TITLES[section], fontsize=10)
    _legend(ax)
    fig.tight_layout()
    return fig


def _legend(ax: Any) -> None:
    patches = importlib.import_module("matplotlib.patches")
    handles = [patches.Patch(color=c, label=r) for r, c in COLORS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right")


def _curves(plt: Any, section: str, figures: Sequence[Figure]) -> Any:
    groups = list(dict.fromkeys(f.group for f in figures))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        names = list(dict.fromkeys(f.name for f in figures if f.group == group))
        for name in names:
            line = sorted(
                (f for f in figures if f.group == group and f.name == name),
                key=lambda f: f.x or 0,
            )
            xs = [f.x for f in line]
            style = "--" if line[0].role == "baseline" else "-"
            ax.errorbar(
                xs,
                [f.median for f in line],
                yerr=_errors(line),
                fmt="o" + style,
                markersize=3,
                capsize=2,
                label=name,
            )
        ax.set_xscale("log", base=2 if section == "concurrency" else 10)
        ticks = sorted({f.x for f in figures if f.group == group and f.x is not None})
        ax.set_xticks(ticks, [x_label(section, x) for x in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_title(group, fontsize=9)
        ax.set_xlabel(
            {
                "sessions": "sessions stored",
                "payload": "payload (bytes)",
                "concurrency": "concurrent tasks",
            }[section],
            fontsize=8,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("operations per second")
    fig.suptitle(TITLES[section] + "; dashed: baselines", fontsize=10)
    fig.tight_layout()
    return fig


def _footprint(plt: Any, section: str, figures: Sequence[Figure]) -> Any:
    names = list(dict.fromkeys(f.name for f in figures))
    xs = sorted({f.x for f in figures if f.x is not None})
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(xs)
    for i, x in enumerate(xs):
        row = [_find(figures, "footprint", name, x) for name in names]
        values = [f.median if f else 0 for f in row]
        bars = ax.bar([n + i * width for n in range(len(names))], values, width, label=size(x))
        for bar, value in zip(bars, values, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                value,
                f"{value:.0f}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(FOOTPRINT_GOAL, color="tab:red", linestyle=":", label="goal, 1 KiB in MemoryStorage")
    ax.set_xticks([n + 0.4 - width / 2 for n in range(len(names))], names, fontsize=7)
    ax.set_ylabel("bytes per stored session")
    ax.set_ylim(0, 1.3 * max(FOOTPRINT_GOAL, *(f.median for f in figures)))
    ax.set_title(TITLES[section], fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.tight_layout()
    return fig


def _lateness(plt: Any, section: str, figures: Sequence[Figure]) -> Any:
    p99 = [f for f in figures if f.section == "lateness p99"][::-1]
    worst = {(f.group, f.name): f for f in figures if f.section == "lateness max"}
    fig, ax = plt.subplots(figsize=(10, 0.34 * len(p99) + 1.4))
    ys = range(len(p99))
    ax.barh(
        [y + 0.2 for y in ys],
        [worst[f.group, f.name].median for f in p99],
        0.4,
        color="tab:red",
        alpha=0.6,
        label="worst",
    )
    ax.barh([y - 0.2 for y in ys], [f.median for f in p99], 0.4, color="tab:blue", label="p99")
    ax.set_yticks(list(ys), [f"{f.name}  [{f.group}]" for f in p99], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms late (log scale; median over repeats)")
    ax.set_title("Event-loop lateness of a 1 ms heartbeat while tasks write and read", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
