"""Everything the core knows about one run: dedup, alignment, liveness, detectors, cooldowns."""

from __future__ import annotations

import math
from typing import Any

from rankstream.schema import META_FIELDS
from rankstream.stream_jobs.core.alerts import Alerter, Finding
from rankstream.stream_jobs.core.align import Aligner, Released, SeqDedup
from rankstream.stream_jobs.core.detect_ranks import RankDetector
from rankstream.stream_jobs.core.detect_run import GradDetector, LossDetector
from rankstream.stream_jobs.core.liveness import Liveness
from rankstream.stream_jobs.core.rules import RulesConfig

#: Event-time seconds between two liveness checks of a run (silent / hung).
LIVENESS_CHECK_S = 1.0
_MAX_RESTART_TAGS = 16


class RunState:
    """One run's pipeline: dedup and align its events, score released steps, turn findings into alerts."""

    def __init__(
        self,
        run_id: str,
        world_size: int,
        ts: float,
        config: RulesConfig,
        stats: dict[str, int],
        trust_first_seq: bool = False,
    ) -> None:
        self.run_id = run_id
        self.config = config
        self.stats = stats
        self.team = ""
        self.run_name = ""
        self.meta: dict[str, Any] = {}
        resolved = config.resolve("", "")
        self.rules = resolved.rules
        self.alignment = resolved.alignment
        self.world_size = world_size
        self.dedup = SeqDedup(resolved.alignment.dedup_window, trust_first_seq)
        self.aligner = Aligner(run_id, world_size, resolved.alignment, self.dedup)
        self.liveness = Liveness(world_size, ts, resolved.rules)
        self.loss = LossDetector(resolved.rules)
        self.grad = GradDetector(resolved.rules)
        self.rank_rules = RankDetector(resolved.rules)
        self.alerter = Alerter(run_id)
        self.precision = ""
        self.has_stage = False
        self.prev_lr: float | None = None
        self.last_check = -math.inf
        self.last_event_ts = ts
        self.ended_at: float | None = None
        self.restart_tags: list[str] = []
        self.label = f"run {run_id}"

    # ------------------------------------------------------------------ events

    def process(self, ev: dict[str, Any], steps: list[dict], alerts: list[dict]) -> None:
        rank = ev["rank"]
        tags = ev["tags"]
        gen = tags.get("restart") if tags else None
        if self.dedup.seen(rank if gen is None else (rank, gen), ev["seq"]):
            self.stats["duplicates"] += 1
            return
        ts = ev["ts"]
        aligner = self.aligner
        if ts > aligner.clock:
            aligner.clock = ts
        if ts > self.last_event_ts:
            self.last_event_ts = ts
        kind = ev["kind"]
        step = ev["step"]
        if ev["world_size"] != self.world_size and (kind == "run_start" or step >= aligner.max_step):
            self._resize(ev["world_size"], ts)
        in_world = rank < self.liveness.world_size
        released: list[Released] = []
        if kind == "step":
            if not self.precision and tags:
                self.precision = tags.get("precision", "")
            if gen is not None and gen not in self.restart_tags:
                self._restart(gen, step, released)
            if in_world:
                self.liveness.seen(rank, ts, step, True)
            if aligner.add(ev):
                self.rank_rules.on_time(rank)
                if aligner.absent:
                    aligner.absent.discard(rank)
            else:
                self.stats["late_events"] += 1
                late = self.rank_rules.on_late(rank, step, ts=ts, last_released=aligner.last_released, label=self.label)
                self._alert(late, alerts)
        elif kind == "heartbeat":
            self.stats["heartbeats"] += 1
            if in_world:
                self.liveness.seen(rank, ts, step, True)
        elif kind == "eval":
            self.stats["eval_events"] += 1
            if in_world:
                self.liveness.seen(rank, ts, step, True)
                self.liveness.progress_ts[rank] = max(self.liveness.progress_ts[rank], ts)
        elif kind == "run_start":
            self._start(ev)
            if in_world:
                self.liveness.seen(rank, ts, -1, False)
        else:  # run_end
            if in_world:
                self.liveness.seen(rank, ts, -1, False)
                self.liveness.ended.add(rank)
                if len(self.liveness.ended) >= self.liveness.world_size and self.ended_at is None:
                    self.ended_at = ts
        aligner.drain(released)
        for rel in released:
            self._on_released(rel, steps, alerts)
        if aligner.clock - self.last_check >= LIVENESS_CHECK_S:
            self.check_liveness(steps, alerts)

    def _start(self, ev: dict[str, Any]) -> None:
        meta = ev["meta"]
        tags = ev["tags"]
        if tags and not self.precision:
            self.precision = tags.get("precision", "")
        if not meta:
            return
        for key in META_FIELDS:
            if key in meta and key != "config":
                self.meta[key] = meta[key]
        team = meta.get("team")
        run_name = meta.get("run_name")
        changed = False
        if isinstance(team, str) and team != self.team:
            self.team = team
            self.alerter.team = team
            changed = True
        if isinstance(run_name, str) and run_name and run_name != self.run_name:
            self.run_name = run_name
            self.label = f"run {run_name} ({self.run_id})"
            changed = True
        if changed:
            self._apply_rules()

    def _apply_rules(self) -> None:
        """Team / run_name became known: switch to the matching overrides (windows are kept)."""
        resolved = self.config.resolve(self.team, self.run_name)
        if resolved.rules is self.rules and resolved.alignment is self.alignment:
            return
        self.rules = resolved.rules
        self.alignment = resolved.alignment
        self.aligner.set_config(resolved.alignment)
        self.liveness.rules = resolved.rules
        for det in (self.loss, self.grad, self.rank_rules):
            det.rules = resolved.rules
        self.loss.window.resize(resolved.rules.loss_spike.window)
        self.grad.window.resize(resolved.rules.grad_explosion.window)
        self.grad.adapter_window.resize(resolved.rules.adapter_grad_vanishing.window)

    def _resize(self, world_size: int, ts: float) -> None:
        self.stats["world_size_changes"] += 1
        self.world_size = world_size
        self.aligner.world_size = world_size
        self.aligner.absent = {r for r in self.aligner.absent if r < world_size}
        self.liveness.resize(world_size, ts)

    def _restart(self, gen: str, step: int, released: list[Released]) -> None:
        """A new ``restart`` tag value: the job resumed from a checkpoint on the same run_id."""
        self.restart_tags.append(gen)
        del self.restart_tags[:-_MAX_RESTART_TAGS]
        if step <= self.aligner.last_released or self.aligner.restart > 0 or len(self.restart_tags) > 1:
            self.stats["restarts"] += 1
            self.aligner.restart_from(step, released)
            self.liveness.last_step = [min(s, step - 1) for s in self.liveness.last_step]

    # --------------------------------------------------------------- released steps

    def _warmup(self, rel: Released) -> bool:
        if rel.has_stage_tag:
            self.has_stage = True
        lr = rel.record["metrics"].get("lr")
        prev = self.prev_lr
        if lr is not None:
            self.prev_lr = lr["mean"]
        if rel.warmup_tag:
            return True
        if self.has_stage or lr is None or prev is None:
            return False
        return lr["mean"] > prev * (1.0 + 1e-9)

    def _on_released(self, rel: Released, steps: list[dict], alerts: list[dict]) -> None:
        rec = rel.record
        warmup = self._warmup(rel)
        rec["warmup"] = warmup
        steps.append(rec)
        self.stats["steps"] += 1
        if not rec["complete"]:
            self.stats["partial_steps"] += 1
        fp16 = self.precision == "fp16" or (not self.precision and "loss_scale" in rec["metrics"])
        label = self.label
        self._alert(self.loss.on_step(rel, warmup=warmup, label=label), alerts)
        self._alert(self.grad.on_step(rel, warmup=warmup, fp16=fp16, label=label), alerts)
        median_step = self.aligner.median_step_time()
        self._alert(self.rank_rules.on_step(rel, median_step=median_step, warmup=warmup, label=label), alerts)

    def _alert(self, findings: list[Finding], alerts: list[dict]) -> None:
        """Alert policy (warmup mode, cooldown) over a detector's findings, in their order."""
        if findings:
            self.alerter.emit_all(findings, self.rules, alerts)

    def check_liveness(self, steps: list[dict], alerts: list[dict]) -> None:
        aligner = self.aligner
        self.last_check = aligner.clock
        absent, findings = self.liveness.check(
            clock=aligner.clock,
            median_step=aligner.median_step_time(),
            step=max(aligner.max_step, aligner.last_released),
            started=aligner.released_count > 0,
            label=self.label,
        )
        self._alert(findings, alerts)
        if absent != aligner.absent:
            aligner.absent = absent
            released: list[Released] = []
            aligner.drain(released)
            for rel in released:
                self._on_released(rel, steps, alerts)

    def advance(self, now: float, steps: list[dict], alerts: list[dict]) -> None:
        aligner = self.aligner
        if now > aligner.clock:
            aligner.clock = now
        released: list[Released] = []
        aligner.drain(released)
        for rel in released:
            self._on_released(rel, steps, alerts)
        self.check_liveness(steps, alerts)

    def flush(self, steps: list[dict], alerts: list[dict]) -> None:
        released: list[Released] = []
        self.aligner.flush(released)
        for rel in released:
            self._on_released(rel, steps, alerts)

    # ---------------------------------------------------------------------- state

    def to_state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "run_id": self.run_id,
            "team": self.team,
            "run_name": self.run_name,
            "meta": dict(self.meta),
            "precision": self.precision,
            "has_stage": self.has_stage,
            "prev_lr": self.prev_lr,
            "last_event_ts": self.last_event_ts,
            "ended_at": self.ended_at,
            "restart_tags": list(self.restart_tags),
            "aligner": self.aligner.to_state(),
            "liveness": self.liveness.to_state(),
            "loss": self.loss.to_state(),
            "grad": self.grad.to_state(),
            "ranks": self.rank_rules.to_state(),
            "cooldowns": self.alerter.to_state(),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.meta = dict(s.get("meta", {}))
        self.team = s.get("team", "")
        self.alerter.team = self.team
        self.run_name = s.get("run_name", "")
        if self.run_name:
            self.label = f"run {self.run_name} ({self.run_id})"
        self._apply_rules()
        self.precision = s.get("precision", "")
        self.has_stage = bool(s.get("has_stage", False))
        self.prev_lr = s.get("prev_lr")
        self.last_event_ts = max(self.last_event_ts, float(s.get("last_event_ts", 0.0)))
        self.ended_at = s.get("ended_at")
        self.restart_tags = list(s.get("restart_tags", []))
        self.aligner.load_state(s["aligner"])
        self.world_size = self.aligner.world_size
        self.liveness.load_state(s["liveness"])
        self.loss.load_state(s["loss"])
        self.grad.load_state(s["grad"])
        self.rank_rules.load_state(s["ranks"])
        self.alerter.load_state(s["cooldowns"])
