"""The soak suite's Markdown report."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "backend",
    "scenario",
    "requests",
    "5xx (by code)",
    "unanswered",
    "lost",
    "jumped",
    "resurrected",
    "left",
    "temp files",
    "RSS MiB start → end (slope/min)",
    "fds",
    "recovery s (max)",
    "verdict",
)


def _codes(result: dict[str, Any]) -> str:
    codes = result.get("server_errors") or {}
    if not codes:
        return "0"
    text = ", ".join(f"{n}x{code}" for code, n in sorted(codes.items()))
    unexpected = result.get("server_errors_unexpected", 0)
    return text + (f" ({unexpected} unexpected)" if unexpected else "")


def _memory(result: dict[str, Any]) -> str:
    if "rss_start_mib" not in result:
        return "-"
    slope = result.get("rss_slope_mib_per_min")
    tail = f" ({slope:+.1f})" if slope is not None else ""
    return f"{result['rss_start_mib']:.0f} → {result['rss_end_mib']:.0f}{tail}"


def _value(value: Any) -> str:
    return "-" if value is None else str(value)


def row(result: dict[str, Any]) -> list[str]:
    backend, scenario = result["backend"], result["scenario"]
    if result.get("status") != "ran":
        note = result.get("note") or "; ".join(result.get("failures", []))
        return [backend, scenario, *(["-"] * (len(COLUMNS) - 3)), f"{result['status']}: {note}"]
    recoveries = [f["recovery_s"] for f in result.get("faults", []) if f["recovery_s"] is not None]
    recovery = "-"
    if result.get("faults"):
        recovery = (
            f"{max(recoveries):.2f} ({len(result['faults'])} faults)" if recoveries else "never"
        )
    temp = result.get("temp_files")
    if temp is not None:
        temp = f"{temp} → {_value(result.get('temp_files_after_purge'))}"
    lost = result.get("lost_writes", 0)
    if result.get("lost_sessions"):
        lost = f"{lost} ({result['lost_sessions']} sessions)"
    resurrected = result.get("resurrected", 0) + result.get("resurrected_late", 0)
    return [
        backend,
        scenario,
        f"{result.get('requests', 0):,}",
        _codes(result),
        str(result.get("connection_errors", 0)),
        str(lost),
        str(result.get("jumped", 0)),
        str(resurrected),
        _value(result.get("left")),
        _value(temp),
        _memory(result),
        f"{_value(result.get('fds_start'))} → {_value(result.get('fds_end'))}",
        recovery,
        result.get("verdict", "?"),
    ]


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(result)) + " |" for result in results]
    return "\n".join(lines) + "\n"


def markdown(data: dict[str, Any]) -> str:
    start, end = data["machine_at_start"], data.get("machine_at_end", data["machine_at_start"])
    plan = data["plan"]
    out = [
        f"# Soak and chaos run ({data['mode']})\n",
        f"`{data['command']}` on {data['started']}, code {data['code']}: "
        f"{data.get('seconds', '?')} s in all.\n",
        f"{start['cpus']} CPUs, {start['platform']}, Python {start['python']}, as "
        f"{start['user']}; load average {' '.join(map(str, start['load_average']))} at the "
        f"start, {' '.join(map(str, end['load_average']))} at the end.\n",
        f"{plan['users']} virtual users, {plan['seconds']:g} s of load per scenario; "
        f"disk full: {data.get('disk_full') or 'not run'}.\n",
        table(data["results"]),
    ]
    for backend, why in data.get("skipped", {}).items():
        out.append(f"- {backend} skipped: {why}\n")
    failed = [r for r in data["results"] if r.get("verdict") == "fail"]
    if failed:
        out.append("\n## Failures\n")
        for result in failed:
            out.append(f"- **{result['backend']} {result['scenario']}**: ")
            out.append("; ".join(result.get("failures", [])) + "\n")
            for example in result.get("examples", [])[:5]:
                out.append(f"  - `{example}`\n")
    out.append(f"\n{'PASSED' if data.get('passed') else 'FAILED'}\n")
    return "".join(out)


def rst(data: dict[str, Any]) -> str:
    """The table as a reStructuredText list-table (for the docs' Reliability page)."""
    start, end = data["machine_at_start"], data.get("machine_at_end", data["machine_at_start"])
    plan = data["plan"]
    lines = [
        f".. list-table:: {data['command']} ({data['started']}); "
        f"load average {start['load_average'][0]} at the start, {end['load_average'][0]} at "
        f"the end; {plan['users']} users, {plan['seconds']:g} s per scenario",
        "   :header-rows: 1",
        "",
    ]
    for cells in [list(COLUMNS), *(row(result) for result in data["results"])]:
        cells = [r"\-" if cell == "-" else cell for cell in cells]  # not an empty list
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return "\n".join(lines) + "\n"
