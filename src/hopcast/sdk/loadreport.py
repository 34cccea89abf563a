"""The load harness's numbers: one run's report from its device records, and the PNG charts.

Pure functions over what the simulator's processes measured (:mod:`hopcast.sdk.fleet`), plus
:func:`write_charts`, which imports matplotlib (the ``bench`` extra) only when called.

Definitions used in the report (times in ms unless the key says otherwise):

* **time to update** of a stage: from the trigger's ``ts`` (when the stage took effect at the
  origin) to the moment the device had applied it *and* held its payload;
* **applied twice**: a device applied the same ``(event, version)`` twice — must be 0;
* **redelivered**: triggers the SDK received again and ignored (at-least-once at work);
* **misses**: stages the coordinator drove that a device never applied, and display stages
  applied whose payload never arrived;
* **origin hits at trigger**: devices that requested the ``live`` stage's payload from the origin
  (they lacked it when the trigger came);
* **origin series**: requests devices sent to the API, by second since the event was created,
  by kind (``manifest``, ``payload``; tokens and payloads of other events are counted apart).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hopcast.durations import SECOND
from hopcast.sdk.fleet import DISPLAY_STAGES, DeviceRecord

Doc = dict[str, Any]

#: The prefetch window's target: the origin's busiest second stays within this factor of the
#: mean rate N / window (issue 4's target).
PEAK_TARGET_FACTOR = 1.2
#: At trigger time at most this share of devices may hit the origin (issue 4's target).
TRIGGER_HIT_TARGET = 0.01
#: Request kinds that make up the event's origin load (tokens are the login service's).
ORIGIN_KINDS = ("manifest", "payload")


def percentiles(values: Sequence[float]) -> Doc:
    """``count``, ``p50``, ``p90``, ``p99``, ``max`` and ``mean`` of ``values`` (nearest rank);
    all ``None`` but ``count`` when empty."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "count": len(ordered),
        "p50": round(rank(0.50), 3),
        "p90": round(rank(0.90), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


def per_second(requests: Iterable[tuple[int, str]], origin: int) -> list[Doc]:
    """Requests by whole second since ``origin`` (µs), one row per second from the earlier of
    0 and the first request to one past the last (a closing zero row, so a chart's last step
    shows): ``{"t": s, "<kind>": n, …, "total": n}`` where ``total`` counts the event's origin
    kinds (:data:`ORIGIN_KINDS`)."""
    counts: Counter[tuple[int, str]] = Counter()
    kinds: set[str] = set(ORIGIN_KINDS)
    for at, kind in requests:
        counts[((at - origin) // SECOND, kind)] += 1
        kinds.add(kind)
    if not counts:
        return []
    first = min(0, *(s for s, _ in counts))
    last = max(s for s, _ in counts) + 1
    rows = []
    for s in range(first, last + 1):
        row: Doc = {"t": s}
        for kind in sorted(kinds):
            row[kind] = counts.get((s, kind), 0)
        row["total"] = sum(row[k] for k in ORIGIN_KINDS)
        rows.append(row)
    return rows


def peak_in(requests: Iterable[tuple[int, str]], start: int, end: int) -> int:
    """The busiest whole second of origin requests in ``[start, end)`` (µs), seconds counted
    from ``start``; a trailing partial second counts as a second."""
    counts: Counter[int] = Counter(
        (at - start) // SECOND
        for at, kind in requests
        if kind in ORIGIN_KINDS and start <= at < end
    )
    return max(counts.values(), default=0)


def stage_summary(records: Sequence[DeviceRecord], stage: str) -> Doc:
    """One stage over the fleet: how many devices applied it and got its payload, the trigger's
    delivery time (``ts`` → applied) and the time to update (``ts`` → applied with payload)."""
    delivered = [
        (r.stages[stage].applied_at - r.stages[stage].ts) / 1000
        for r in records
        if stage in r.stages
    ]
    times = ttu_values(records, stage)
    return {
        "applied": len(delivered),
        "updated": len(times),
        "missing_payload": len(delivered) - len(times),
        "delivery_ms": percentiles(delivered),
        "time_to_update_ms": percentiles(times),
    }


def reconnect_summary(records: Sequence[DeviceRecord], restart_at: int) -> Doc:
    """How the devices came back after a restart began at ``restart_at`` (µs): each device's
    first welcome after it, in seconds since ``restart_at``; the p10-p90 spread; and the most
    devices welcomed back within one 100 ms slot (all in one instant would be a storm)."""
    firsts = sorted(
        (min(w for w in r.welcomes if w >= restart_at) - restart_at) / SECOND
        for r in records
        if any(w >= restart_at for w in r.welcomes)
    )
    slots = Counter(int(t * 10) for t in firsts)
    spread = None
    if firsts:
        spread = firsts[int(0.9 * (len(firsts) - 1))] - firsts[int(0.1 * (len(firsts) - 1))]
    return {
        "reconnected": len(firsts),
        "not_reconnected": len(records) - len(firsts),
        "seconds_after_restart": percentiles(firsts),
        "spread_p10_p90_s": None if spread is None else round(spread, 3),
        "busiest_100ms": max(slots.values(), default=0),
    }


def run_report(
    *,
    mode: str,
    parameters: Doc,
    timeline: Doc,
    records: Sequence[DeviceRecord],
    requests: Sequence[tuple[int, str]],
    stages: Sequence[str],
    server_requests: int | None,
    extra: Doc | None = None,
) -> Doc:
    """One run's report.

    Args:
        mode: ``prefetch`` or ``no_prefetch``.
        parameters: the run's parameters, copied as they are.
        timeline: µs instants: ``created_at``, ``opens_at``, ``closes_at``, ``starts_at``,
            ``live_ts`` (the trigger's), optionally ``restart_at``, ``ended_ts``, and
            ``connect_started_at``.
        records: one per device.
        requests: every request devices sent, ``(sent_at µs, kind)``.
        stages: the stages the run drove, in order; a device that did not apply one missed it.
        server_requests: prefetch requests the server counted (``/metrics``), if read.
    """
    n = len(records)
    origin = timeline["created_at"]
    opens, closes = timeline["opens_at"], timeline["closes_at"]
    span_s = max((closes - opens) / SECOND, 1e-9)
    by_kind = Counter(kind for _, kind in requests)
    origin_total = sum(by_kind[k] for k in ORIGIN_KINDS)
    misses = sum(1 for r in records for s in stages if s not in r.stages)
    missing_payload = sum(
        1
        for r in records
        for s, rec in r.stages.items()
        if s in DISPLAY_STAGES and rec.updated_at is None
    )
    live_ts = timeline.get("live_ts")
    hits = sum(1 for r in records if r.payload_fetches.get("live", 0) > 0)
    peak_window = peak_in(requests, opens, closes) if closes > opens else 0
    target = PEAK_TARGET_FACTOR * n / span_s
    firsts = [r.welcomes[0] for r in records if r.welcomes]
    connect: Doc = {"connected": len(firsts)}
    if len(firsts) > 1:
        # from the first device welcomed to the last (process start-up and token signing are
        # the simulator's own cost, reported apart)
        took = max((max(firsts) - min(firsts)) / SECOND, 1e-6)
        connect |= {"seconds": round(took, 3), "rate_per_s": round(len(firsts) / took, 1)}
        if "connect_started_at" in timeline:
            startup = (min(firsts) - timeline["connect_started_at"]) / SECOND
            connect["startup_s"] = round(startup, 3)
    series = per_second(requests, origin)
    report: Doc = {
        "mode": mode,
        "parameters": parameters,
        "timeline_s": {
            k: round((v - origin) / SECOND, 3)
            for k, v in timeline.items()
            if isinstance(v, int) and k != "created_at"
        },
        "devices": n,
        "connect": connect,
        "counts": {
            "applied_twice": sum(r.applied_twice for r in records),
            "misses": misses + missing_payload,
            "stages_not_applied": misses,
            "missing_payload": missing_payload,
            "redelivered_ignored": sum(r.redelivered for r in records),
            "other_events_applied": sum(r.other_events for r in records),
            "stale_ignored": sum(r.stale for r in records),
            "prefetched": sum(1 for r in records if r.prefetched_at is not None),
            "prefetch_failures": sum(r.prefetch_failures for r in records),
            "fallback_fetches": sum(sum(r.payload_fetches.values()) for r in records),
            "fetch_failures": sum(r.fetch_failures for r in records),
            "connect_failures": sum(r.connect_failures for r in records),
            "reconnects": sum(r.reconnects for r in records),
            "byes": sum(r.byes for r in records),
            "timeouts": sum(r.timeouts for r in records),
        },
        "stages": {s: stage_summary(records, s) for s in stages},
        "origin": {
            "requests": origin_total,
            "by_kind": dict(sorted(by_kind.items())),
            "server_counted": server_requests,
            "peak_rps": max((row["total"] for row in series), default=0),
            "prefetch_window_s": round(span_s, 3),
            "peak_rps_in_window": peak_window,
            "target_peak_rps": round(target, 1),
            "peak_over_mean": round(peak_window / (n / span_s), 3) if n else None,
            "within_target": peak_window <= target,
            "trigger_hits": hits,
            "trigger_hit_pct": round(100 * hits / n, 3) if n else None,
            "trigger_hits_within_target": hits <= TRIGGER_HIT_TARGET * n,
            "series": series,
        },
    }
    if live_ts is not None:
        report["origin"]["trigger_at_s"] = round((live_ts - origin) / SECOND, 3)
    if "restart_at" in timeline:
        report["restart"] = reconnect_summary(records, timeline["restart_at"])
    if extra:
        report.update(extra)
    return report


def write_report(out: Path, runs: Sequence[Doc], parameters: Doc) -> Path:
    """Write ``report.json`` (``{"parameters", "runs"}``) into ``out``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps({"parameters": parameters, "runs": list(runs)}, indent=2) + "\n")
    return path


def write_charts(out: Path, runs: Sequence[Doc], cdfs: dict[str, list[float]]) -> list[Path]:
    """Draw ``time_to_update_cdf.png`` (one curve per run and stage) and ``origin_rps.png``
    (origin requests per second against seconds since the trigger, one line per run, with the
    prefetch window's target rate) into ``out``.

    Args:
        cdfs: ``"<mode> <stage>"`` → every device's time to update, ms.

    Raises:
        ImportError: matplotlib is missing (``pip install 'hopcast[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in cdfs.items():
        if not values:
            continue
        ordered = sorted(values)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, ys, where="post", label=label)
    ax.set_xlabel("time to update (ms, trigger → stage shown with its payload)")
    ax.set_ylabel("share of devices")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Time to update")
    path = out / "time_to_update_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for run in runs:
        origin = run["origin"]
        shift = origin.get("trigger_at_s", 0.0)
        xs = [row["t"] - shift for row in origin["series"]]
        ys = [row["total"] for row in origin["series"]]
        ax.step(xs, ys, where="post", label=f"{run['mode']} (peak {origin['peak_rps']}/s)")
        if run["mode"] == "prefetch":
            ax.axhline(
                origin["target_peak_rps"],
                linestyle="--",
                color="grey",
                label=f"target {PEAK_TARGET_FACTOR} × N / window",
            )
    ax.axvline(0, color="red", linewidth=0.8, label="trigger")
    ax.set_xlabel("seconds since the trigger")
    ax.set_ylabel("origin requests per second")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Origin load: prefetch window vs trigger-time fetches")
    path = out / "origin_rps.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def ttu_values(records: Sequence[DeviceRecord], stage: str) -> list[float]:
    """Every device's time to update ``stage``, ms (devices that got there)."""
    return [
        (rec.updated_at - rec.ts) / 1000
        for r in records
        if (rec := r.stages.get(stage)) is not None and rec.updated_at is not None
    ]
