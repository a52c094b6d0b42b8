"""Deterministic synthetic training runs with injected faults, for tests, benchmarks and demos.

``generate_run`` returns WIRE-form events (JSON-ready; non-finite metrics as
``"nan"``/``"inf"`` strings) in realistic arrival order: ranks interleaved by
``ts``, ``run_start`` first and ``run_end`` last per rank, ``seq`` per rank
from 0. The same arguments always give the same events.

The healthy curve: a noisy warmup (linear lr ramp, loss oscillating), then a
loss that keeps falling (never a plateau within 8000 steps), grad norm near 1,
per-rank noise, identical ``step_time_s`` on every rank (synchronous training)
with per-rank ``compute_time_s`` / ``data_time_s``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: kind -> (rule it must trigger or None, minimum duration in steps, default magnitude)
FAULT_KINDS: dict[str, tuple[str | None, int, float]] = {
    "nan_loss": ("nonfinite_loss", 1, 0.0),
    "nan_grad": ("nonfinite_grad", 1, 0.0),
    "loss_spike": ("loss_spike", 1, 4.0),  # loss x magnitude
    "loss_rising": ("loss_rising", 60, 0.3),  # loss grows by +magnitude (relative) over the duration
    "plateau": ("loss_plateau", 300, 0.0),  # loss stops improving for the duration
    "grad_explosion": ("grad_explosion", 1, 50.0),  # grad_norm x magnitude
    "grad_vanishing": ("grad_vanishing", 15, 1e-9),  # grad_norm = magnitude
    "adapter_vanishing": ("adapter_grad_vanishing", 15, 1e-6),  # adapter grad norm = magnitude (needs lora=True)
    "straggler": ("straggler", 20, 1.6),  # rank's compute_time_s x magnitude
    "lagging": ("rank_lagging", 20, 1.5),  # rank's ts + magnitude step times
    "silent": ("rank_silent", 1, 0.0),  # rank sends nothing from fault.step on
    "hung": ("rank_hung", 1, 0.0),  # rank keeps heartbeats, sends no more steps
    "memory_pressure": ("memory_pressure", 5, 0.97),  # rank's mem_peak_mb = magnitude x mem_total_mb
    "fp16_overflow": (None, 1, 0.0),  # inf grad norm with the loss scale halving (needs precision="fp16")
    "duplicate_delivery": (None, 1, 1.0),  # re-deliver magnitude (fraction) of the events in the window
}

_MEM_TOTAL_MB = 81920.0


@dataclass(frozen=True)
class Fault:
    """A fault injected from ``step`` for ``duration`` steps (raised to the kind's minimum).

    ``rank`` None means rank 0 for per-rank kinds (all ranks for run-level ones);
    ``magnitude`` 0 means the kind's default (see :data:`FAULT_KINDS`).
    """

    kind: str
    step: int
    rank: int | None = None
    duration: int = 1
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(sorted(FAULT_KINDS))})")

    @property
    def steps(self) -> range:
        return range(self.step, self.step + max(self.duration, FAULT_KINDS[self.kind][1]))

    @property
    def value(self) -> float:
        return self.magnitude or FAULT_KINDS[self.kind][2]

    @property
    def target(self) -> int:
        return 0 if self.rank is None else self.rank


def expected_rules(faults: Sequence[Fault]) -> set[str]:
    """Rules that these faults must trigger at warning or critical severity."""
    return {rule for f in faults if (rule := FAULT_KINDS[f.kind][0]) is not None}


def _active(faults: Sequence[Fault], kind: str, step: int) -> Fault | None:
    for f in faults:
        if f.kind == kind and step in f.steps:
            return f
    return None


def _base_loss(step: int, steps: int) -> float:
    return 1.5 + 2.0 * math.exp(-3.0 * step / max(steps, 1)) + 0.8 * (1.0 - step / max(steps, 1))


def generate_run(
    run_id: str,
    world_size: int,
    steps: int,
    *,
    faults: Sequence[Fault] = (),
    seed: int = 0,
    start_ts: float = 1.7e9,
    step_time_s: float = 0.5,
    warmup_steps: int = 20,
    lora: bool = False,
    precision: str = "bf16",
    team: str = "team-a",
    heartbeat_every_s: float = 10.0,
    model_name: str = "tiny-llama",
    stage_tags: bool = True,
    incarnations: bool = False,
) -> list[dict[str, Any]]:
    """A run of ``world_size`` ranks for ``steps`` steps, as wire events in arrival order.

    ``incarnations``: every event carries an ``inc`` per rank, as the producer sends it (deterministic here).
    """
    rng = random.Random(f"{run_id}:{seed}")
    faults = tuple(faults)
    for f in faults:
        if f.rank is not None and not 0 <= f.rank < world_size:
            raise ValueError(f"fault {f.kind} targets rank {f.rank} outside world_size {world_size}")
    silent_from = {f.target: f.step for f in faults if f.kind == "silent"}
    hung_from = {f.target: f.step for f in faults if f.kind == "hung"}
    # (ts, rank, event-without-seq)
    stream: list[tuple[float, int, dict[str, Any]]] = []
    meta = {
        "run_name": f"{model_name}-{run_id}",
        "team": team,
        "project": "synthetic",
        "task_type": "lora" if lora else "pretrain",
        "model_name": model_name,
        "model_architecture": "LlamaForCausalLM",
        "config": {"lr": 3e-4, "warmup_steps": warmup_steps, "world_size": world_size, "precision": precision},
    }
    common_tags = {"precision": precision}
    hosts = [f"node{r // 8:03d}" for r in range(world_size)]
    for r in range(world_size):
        stream.append(
            (
                start_ts - 5.0 + 0.001 * r,
                r,
                {"kind": "run_start", "rank": r, "step": 0, "metrics": {}, "tags": dict(common_tags), "meta": meta},
            )
        )
    peak_lr = 3e-4
    loss_scale = 65536.0
    t = start_ts
    last_done = [-1] * world_size
    rank_noise = [1.0 + 0.01 * rng.uniform(-1, 1) for _ in range(world_size)]
    for s in range(steps):
        warm = s < warmup_steps
        lr = (
            peak_lr * (s + 1) / warmup_steps
            if warm
            else peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        )
        base = _base_loss(s, steps)
        plateau = next((f for f in faults if f.kind == "plateau" and s >= f.step), None)
        if plateau is not None:
            n_plat = len(plateau.steps)
            base = _base_loss(plateau.step if s < plateau.step + n_plat else s - n_plat, steps)
        rising = next((f for f in faults if f.kind == "loss_rising" and s >= f.step), None)
        if rising is not None:
            frac = min(1.0, (s - rising.step) / len(rising.steps))
            base *= 1.0 + rising.value * frac
        shared = 1.0 + 0.005 * rng.gauss(0, 1)
        if warm:
            shared *= 1.0 + 0.15 * math.sin(s * 1.7) + 0.08 * rng.gauss(0, 1)
        spike = _active(faults, "loss_spike", s)
        gn = (4.0 + 3.0 * rng.random()) if warm else 1.0 * (1.0 - 0.3 * s / steps) * (1.0 + 0.08 * rng.gauss(0, 1))
        gn_field: float | str = gn
        if (explosion := _active(faults, "grad_explosion", s)) is not None:
            gn_field = gn * explosion.value
        if (vanishing := _active(faults, "grad_vanishing", s)) is not None:
            gn_field = vanishing.value
        adapter: float | str = gn
        if lora and (adapter_fault := _active(faults, "adapter_vanishing", s)) is not None:
            adapter = adapter_fault.value
            gn_field = f.value
        if _active(faults, "nan_grad", s) is not None:
            gn_field = "nan"
        overflow = precision == "fp16" and _active(faults, "fp16_overflow", s) is not None
        if overflow:
            gn_field = "inf"
            loss_scale /= 2.0
        # Timing: ranks compute in parallel, the step ends when the slowest finishes (all-reduce).
        compute = [step_time_s * 0.8 * (1.0 + 0.02 * rng.gauss(0, 1)) for _ in range(world_size)]
        data = [step_time_s * 0.04 * (1.0 + 0.2 * rng.random()) for _ in range(world_size)]
        for f in faults:
            if f.kind == "straggler" and s in f.steps:
                compute[f.target] *= f.value
        own = [c + d for c, d in zip(compute, data, strict=True)]
        slowest = max(own)
        duration = slowest + step_time_s * 0.12
        t_end = t + duration
        tokens = 4096.0 / duration
        for r in range(world_size):
            if r in silent_from and s >= silent_from[r]:
                continue
            if r in hung_from and s >= hung_from[r]:
                continue
            ts = t_end + 0.002 * rng.random() + 0.5 * (own[r] - min(own))
            lag = _active(faults, "lagging", s)
            if lag is not None and lag.target == r:
                ts += lag.value * step_time_s
            loss_value = base * shared * rank_noise[r] * (1.0 + 0.02 * rng.gauss(0, 1))
            if spike is not None:
                loss_value *= spike.value
            loss: float | str = loss_value
            nl = _active(faults, "nan_loss", s)
            if nl is not None and nl.target == r:
                loss = "nan"
            peak = _MEM_TOTAL_MB * 0.6 * (1.0 + 0.01 * rng.random())
            mp = _active(faults, "memory_pressure", s)
            if mp is not None and mp.target == r:
                peak = _MEM_TOTAL_MB * mp.value
            metrics: dict[str, float | str] = {
                "loss": loss if isinstance(loss, str) else round(loss, 6),
                "lr": lr,
                "grad_norm": gn_field if isinstance(gn_field, str) else round(gn_field, 9 if gn_field < 1e-3 else 6),
                "step_time_s": round(duration, 6),
                "data_time_s": round(data[r], 6),
                "compute_time_s": round(compute[r], 6),
                "tokens_per_s": round(tokens, 3),
                "mem_alloc_mb": round(peak * 0.7, 1),
                "mem_reserved_mb": round(peak * 1.02, 1),
                "mem_peak_mb": round(peak, 1),
                "mem_total_mb": _MEM_TOTAL_MB,
            }
            if lora:
                metrics["grad_norm_adapter"] = adapter if isinstance(adapter, str) else round(adapter, 9)
                metrics["grad_norm_backbone"] = 0.0
            if precision == "fp16":
                metrics["loss_scale"] = loss_scale
            tags = {"precision": precision}
            if stage_tags:
                tags["stage"] = "warmup" if warm else "train"
            stream.append((ts, r, {"kind": "step", "rank": r, "step": s, "metrics": metrics, "tags": tags, "meta": {}}))
            last_done[r] = s
        t = t_end
        _heartbeats(stream, t - duration, t, heartbeat_every_s, start_ts, world_size, last_done, silent_from, s)
    for r in range(world_size):
        if r in silent_from or r in hung_from:
            continue
        stream.append(
            (
                t + 1.0 + 0.001 * r,
                r,
                {"kind": "run_end", "rank": r, "step": steps - 1, "metrics": {}, "tags": {}, "meta": {}},
            )
        )
    stream.sort(key=lambda item: (item[0], item[1]))
    incs = [_incarnation(run_id, seed, r) if incarnations else "" for r in range(world_size)]
    events = _finalise(stream, run_id, world_size, hosts, incs)
    dups = [f for f in faults if f.kind == "duplicate_delivery"]
    if dups:
        events = _duplicate(events, dups, rng)
    return events


def _heartbeats(
    stream: list,
    t0: float,
    t1: float,
    every: float,
    start_ts: float,
    world_size: int,
    last_done: list[int],
    silent_from: dict[int, int],
    step: int,
) -> None:
    """Heartbeats whose scheduled time falls in (t0, t1]; each rank has its own phase."""
    if every <= 0:
        return
    for r in range(world_size):
        if r in silent_from and step >= silent_from[r]:
            continue
        phase = start_ts + (r * 0.37) % every
        k = math.floor((t1 - phase) / every)
        hb = phase + k * every
        if t0 < hb <= t1:
            stream.append(
                (
                    hb,
                    r,
                    {
                        "kind": "heartbeat",
                        "rank": r,
                        "step": max(last_done[r], 0),
                        "metrics": {},
                        "tags": {},
                        "meta": {},
                    },
                )
            )


def _finalise(stream: list, run_id: str, world_size: int, hosts: list[str], incs: list[str]) -> list[dict[str, Any]]:
    seq = [0] * world_size
    out = []
    for ts, r, body in stream:
        ev = {
            "v": 1,
            "kind": body["kind"],
            "run_id": run_id,
            "rank": r,
            "world_size": world_size,
            "local_rank": r % 8,
            "host": hosts[r],
            "step": body["step"],
            "ts": round(ts, 6),
            "seq": seq[r],
            "metrics": body["metrics"],
            "tags": body["tags"],
        }
        if body["meta"]:
            ev["meta"] = body["meta"]
        if incs[r]:
            ev["inc"] = incs[r]
        seq[r] += 1
        out.append(ev)
    return out


def _incarnation(run_id: str, seed: int, rank: int) -> str:
    """A producer-like incarnation id (12 hex digits), the same for the same arguments."""
    return hashlib.sha256(f"{run_id}:{seed}:{rank}".encode()).hexdigest()[:12]


def _duplicate(events: list[dict[str, Any]], dups: list[Fault], rng: random.Random) -> list[dict[str, Any]]:
    """Re-deliver events of the fault window a little later (an at-least-once retry)."""
    extra: list[tuple[int, dict[str, Any]]] = []
    for i, ev in enumerate(events):
        for f in dups:
            if ev["kind"] == "step" and ev["step"] in f.steps and (f.rank is None or f.rank == ev["rank"]):
                if rng.random() < f.value:
                    extra.append((i + 1 + rng.randrange(0, 64), ev))
                break
    if not extra:
        return events
    by_pos: dict[int, list[dict[str, Any]]] = {}
    for pos, ev in extra:
        by_pos.setdefault(pos, []).append(dict(ev))
    out: list[dict[str, Any]] = []
    for i, ev in enumerate(events):
        out.extend(by_pos.pop(i, ()))
        out.append(ev)
    for pos in sorted(by_pos):
        out.extend(by_pos[pos])
    return out
