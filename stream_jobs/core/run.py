"""Everything the core knows about one run: dedup, alignment, liveness, detectors, cooldowns.

A run may span several launches (resume from a checkpoint, elastic restart, relaunch under the
same run_id). Each process start of a rank has its own incarnation id (``inc``) and counts ``seq``
from 0. An incarnation belongs to the *attempt* (``restart``) in which it sent its first step; a
new incarnation of a rank that already stepped in this attempt is a relaunch, and when its first
step goes back to an already released one, a new attempt begins (``restart`` + 1, the steps are
aligned again, both attempts are kept downstream). Events of an earlier attempt's incarnations
that arrive afterwards (a dead process's spool) are counted (``stale_events``) and not aligned.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from rankstream.schema import META_FIELDS
from rankstream.stream_jobs.core.alerts import Alerter, Finding, StepContext
from rankstream.stream_jobs.core.align import Aligner, Released, SeqDedup
from rankstream.stream_jobs.core.detect_eval import EvalTracker
from rankstream.stream_jobs.core.detect_ranks import RankDetector
from rankstream.stream_jobs.core.detect_run import GradDetector, LossDetector
from rankstream.stream_jobs.core.liveness import Liveness
from rankstream.stream_jobs.core.rules import RulesConfig
from rankstream.stream_jobs.core.run_state import export_run, import_run
from rankstream.stream_jobs.core.skew import ClockSkew, skew_finding

#: Event-time seconds between two liveness checks of a run (silent / hung).
LIVENESS_CHECK_S = 1.0
_MAX_RESTART_TAGS = 16
#: One rank alone this far ahead of every other rank does not move the run's clock (seconds).
_LEAD_GUARD_S = 10.0
#: Incarnations remembered per run beyond the world size (older ones are forgotten first).
_MAX_INCS_EXTRA = 64


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
        self.aligner.stats = stats
        self.liveness = Liveness(world_size, ts, resolved.rules)
        self.loss = LossDetector(resolved.rules)
        self.grad = GradDetector(resolved.rules)
        self.rank_rules = RankDetector(resolved.rules)
        self.evals = EvalTracker(run_id, resolved.rules)
        self.alerter = Alerter(run_id)
        self.precision = ""
        self.has_stage = False
        self.prev_lr: float | None = None
        self.last_check = -math.inf
        self.last_event_ts = ts
        self.ended_at: float | None = None
        self.restart_tags: list[str] = []
        #: rank -> its incarnation that stepped in the current attempt.
        self.attempt_ranks: dict[int, str] = {}
        #: (rank, inc) -> the attempt it stepped in (bounded, oldest forgotten first).
        self.inc_attempt: dict[tuple[int, str], int] = {}
        #: The run was forgotten after all its ranks ended and came back: the next launch may repeat steps.
        self.expect_relaunch = False
        self.skew = ClockSkew()
        #: Events of this run so far, and the count at each rank's latest event (who is reporting now).
        self._events = 0
        self._heard: dict[int, int] = {}
        #: Set by the engine: this run's ``ts`` + offset = the engine's arrival clock; when it last heard from it.
        self.offset = 0.0
        self.heard_at = 0.0
        self.label = f"run {run_id}"

    # ------------------------------------------------------------------ events

    def process(self, ev: dict[str, Any], steps: list[dict], alerts: list[dict], arrival: float | None = None) -> None:
        """One validated event; ``arrival``: the caller's arrival time in this run's time, if it has one."""
        rank = ev["rank"]
        tags = ev["tags"]
        gen = tags.get("restart") if tags else None
        inc = ev.get("inc")
        key: Hashable = (rank, inc) if inc else rank if gen is None else (rank, gen)  # = dedup_key(ev)
        if self.dedup.seen(key, ev["seq"]):
            self.stats["duplicates"] += 1
            return
        released: list[Released] = []
        skew = self.skew
        if inc:
            attempt = self.inc_attempt.get((rank, inc))
            if attempt is None or attempt < self.aligner.restart:
                if not self._incarnation(ev, rank, inc, released, alerts):
                    self.stats["stale_events"] += 1
                    return
                if skew.incs.get(rank) != inc:  # a new process of this rank: maybe another host and clock
                    skew.forget(rank, inc)
        if skew.offset:
            off = skew.offset.get(rank)
            if off:
                ev["ts"] -= off  # this host's clock is off: the run's own time from here on
        if skew.watching and self.world_size >= 3:
            found = skew.observe(rank, ev["ts"], arrival, self.world_size)
            if found:
                self._skewed(found, ev, alerts)
        ts = ev["ts"]
        aligner = self.aligner
        self._events += 1
        self._heard[rank] = self._events
        if ts > aligner.clock:
            if ts - aligner.clock <= _LEAD_GUARD_S or self.world_size < 3:
                aligner.clock = ts
            else:
                self._jump_clock(rank, ts)
        if ts > self.last_event_ts:
            self.last_event_ts = ts
        kind = ev["kind"]
        step = ev["step"]
        if ev["world_size"] != self.world_size and (kind == "run_start" or step >= aligner.max_step):
            self._resize(ev["world_size"], ts, step, alerts)
        in_world = rank < self.liveness.world_size
        if kind == "step":
            if not self.precision and tags:
                self.precision = tags.get("precision", "")
            if gen is not None and not inc and gen not in self.restart_tags:
                self._restart(gen, step, released)
            if in_world:
                self.liveness.seen(rank, ts, step, True)
            if aligner.add(ev, key):
                self.rank_rules.on_time(rank)
                if aligner.absent:
                    aligner.absent.discard(rank)
            else:
                self.stats["late_events"] += 1
                self._late(ev, key, alerts)
        elif kind == "heartbeat":
            self.stats["heartbeats"] += 1
            if in_world:
                self.liveness.seen(rank, ts, step, True)
        elif kind == "eval":
            self.stats["eval_events"] += 1
            if in_world:
                self.liveness.seen(rank, ts, step, True)
                self.liveness.progress_ts[rank] = max(self.liveness.progress_ts[rank], ts)
                self.evals.add(ev)
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
        self._emit(released, steps, alerts)
        if self.ended_at is not None and len(self.alerter.open):
            self.alerter.open.resolve_all(aligner.last_released, ts, "the run ended", alerts)
        if aligner.clock - self.last_check >= LIVENESS_CHECK_S:
            self.check_liveness(steps, alerts)

    def _jump_clock(self, rank: int, ts: float) -> None:
        """An event more than ``_LEAD_GUARD_S`` past the run's clock: the clock follows it unless that rank
        alone is that far ahead of every other rank (a skewed clock not yet found: it would make every
        pending step look overdue); then it goes only as far as the newest other rank."""
        last_ts = self.liveness.last_ts
        heard = self._heard
        recent = self._events - 4 * len(last_ts)  # the others that sent something in the last few rounds
        others = max((t for r, t in enumerate(last_ts) if r != rank and heard.get(r, recent - 1) >= recent), default=ts)
        clock = ts if ts - others <= _LEAD_GUARD_S else others
        if clock > self.aligner.clock:
            self.aligner.clock = clock

    def _skewed(self, found: list[tuple[int, float]], ev: dict[str, Any], alerts: list[dict]) -> None:
        """Ranks found with a skewed clock: correct what they already moved, report each once."""
        liveness = self.liveness
        for rank, offset in found:
            if rank == ev["rank"]:
                ev["ts"] -= offset
            if rank < liveness.world_size:  # its uncorrected ts must not make it look fresher or staler
                now = ev["ts"] if rank == ev["rank"] else liveness.last_ts[rank] - offset
                liveness.last_ts[rank] = now
                liveness.progress_ts[rank] = min(liveness.progress_ts[rank] - offset, now)
        # The run's clocks were moved by the skewed ranks' uncorrected events: back to the others' time.
        newest = max(liveness.last_ts) if liveness.last_ts else ev["ts"]
        self.aligner.clock = min(self.aligner.clock, newest)
        self.last_event_ts = newest
        if self.rules.clock_skew.enabled:
            at = StepContext(max(self.aligner.max_step, 0), ev["ts"], False, self.label)
            hosts = {ev["rank"]: ev["host"]}
            self._alert([skew_finding(at, self.rules.clock_skew, r, off, hosts.get(r, "")) for r, off in found], alerts)

    def _late(self, ev: dict[str, Any], key: Hashable, alerts: list[dict]) -> None:
        """A step event after its step was released: it completes the step (a revision) when the step is
        still kept. Only a rank whose ``ts`` is late too is lagging; a late delivery alone is not."""
        aligner = self.aligner
        rank, ts = ev["rank"], ev["ts"]
        record = aligner.late(ev, key)
        if record is not None:
            lag = ts - record["ts_first"]
            if lag <= self.rules.rank_lagging.skew_steps * aligner.median_step_time():
                self.rank_rules.on_time(rank)  # stepped with the others; only its delivery was late
                return
        found = self.rank_rules.on_late(rank, ev["step"], ts=ts, last_released=aligner.last_released, label=self.label)
        self._alert(found, alerts)

    def _start(self, ev: dict[str, Any]) -> None:
        meta = ev["meta"]
        tags = ev["tags"]
        if "topology" in ev:  # the rank's parallel layout (sharded / 3D-parallel jobs)
            self.aligner.declare(ev)
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
        for det in (self.loss, self.grad, self.rank_rules, self.evals):
            det.rules = resolved.rules
        self.loss.window.resize(resolved.rules.loss_spike.window)
        self.grad.window.resize(resolved.rules.grad_explosion.window)
        self.grad.adapter_window.resize(resolved.rules.adapter_grad_vanishing.window)

    def _incarnation(
        self, ev: dict[str, Any], rank: int, inc: str, released: list[Released], alerts: list[dict]
    ) -> bool:
        """Place an event of incarnation ``inc`` in an attempt; False when it belongs to an earlier attempt."""
        key = (rank, inc)
        attempt = self.inc_attempt.get(key)
        aligner = self.aligner
        if attempt is not None:
            return attempt >= aligner.restart
        if ev["kind"] != "step":
            if self.attempt_ranks.get(rank) != inc:
                self.liveness.ended.discard(rank)  # a new process of this rank: it has not ended
                self.ended_at = None
            return True  # placed by its first step; until then it is the rank's newest process
        self.stats["incarnations"] += 1
        before = self.attempt_ranks.get(rank)
        step = ev["step"]
        if (before is not None or self.expect_relaunch) and step <= aligner.last_released:
            # A relaunch that went back to a checkpoint: a new attempt of the steps from there on.
            self.expect_relaunch = False
            self.stats["restarts"] += 1
            aligner.restart_from(step, released)
            self.liveness.last_step = [min(s, step - 1) for s in self.liveness.last_step]
            self.loss.new_attempt(step)
            self.attempt_ranks = {}
        self.attempt_ranks[rank] = inc
        self.inc_attempt[key] = aligner.restart
        if len(self.inc_attempt) > self.world_size + _MAX_INCS_EXTRA:
            del self.inc_attempt[next(iter(self.inc_attempt))]
        self.liveness.ended.discard(rank)
        self.ended_at = None
        return True

    def _resize(self, world_size: int, ts: float, step: int, alerts: list[dict]) -> None:
        before = self.world_size
        self.skew.reopen(world_size)
        self.stats["world_size_changes"] += 1
        p = self.rules.membership_changed
        if p.enabled:
            finding = StepContext(max(step, 0), ts, False, self.label).finding(
                "membership_changed",
                p.severity,
                message=f"The world size of {self.label} changed from {before} to {world_size} ranks "
                f"(elastic {'shrink' if world_size < before else 'grow'} or a relaunch): "
                f"{world_size} ranks are expected from step {max(step, 0)} on.",
                evidence={"world_size_before": before, "world_size": world_size, "step": step},
                ranks=[],
            )
            self._alert([finding], alerts)
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

    def _emit(self, released: list[Released], steps: list[dict], alerts: list[dict], flush: bool = False) -> None:
        """Steps just released (scored by the detectors), the evaluations now due, then the revisions that
        are due (not scored)."""
        for rel in released:
            self._on_released(rel, steps, alerts)
        if self.evals.pending:
            train = self.loss.rising.ewma
            self._alert(
                self.evals.release(self.aligner, steps, train_loss=train, label=self.label, force=flush), alerts
            )
        if self.aligner.revisions.active:
            revised = self.aligner.publish_revisions()
            if revised:
                steps.extend(revised)
                self.stats["revisions"] += len(revised)

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
        self.alerter.cadence.logged(rec["step"])
        if not rec["complete"]:
            self.stats["partial_steps"] += 1
        fp16 = self.precision == "fp16" or (not self.precision and "loss_scale" in rec["metrics"])
        label = self.label
        trend = rec["ranks_reported"] * 2 >= rec["world_size"]  # a mean over a few ranks is not the run's
        self._alert(self.loss.on_step(rel, warmup=warmup, label=label, trend=trend), alerts)
        self._alert(self.grad.on_step(rel, warmup=warmup, fp16=fp16, label=label), alerts)
        median_step = self.aligner.median_step_time()
        self._alert(self.rank_rules.on_step(rel, median_step=median_step, warmup=warmup, label=label), alerts)
        if len(self.alerter.open):
            self.alerter.open.resolve_quiet(rec["step"], rec["ts_last"], alerts, self.alerter.cadence.steps)

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
        present = {(f.rule, tuple(sorted(f.ranks))) for f in findings}
        self.alerter.open.resolve_absent(present, max(aligner.max_step, aligner.last_released), aligner.clock, alerts)
        if absent != aligner.absent:
            aligner.absent = absent
            released: list[Released] = []
            aligner.drain(released)
            self._emit(released, steps, alerts)

    def advance(self, now: float, steps: list[dict], alerts: list[dict]) -> None:
        aligner = self.aligner
        if now > aligner.clock:
            aligner.clock = now
        released: list[Released] = []
        aligner.drain(released)
        self._emit(released, steps, alerts)
        self.check_liveness(steps, alerts)

    def flush(self, steps: list[dict], alerts: list[dict]) -> None:
        released: list[Released] = []
        self.aligner.flush(released)
        self._emit(released, steps, alerts, flush=True)

    # ---------------------------------------------------------------------- state

    def to_state(self) -> dict[str, Any]:
        return export_run(self)

    def load_state(self, s: dict[str, Any]) -> None:
        import_run(self, s)
