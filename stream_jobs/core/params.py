"""Typed settings of the detection core: step alignment and one frozen dataclass per rule.

The string under each field is its documentation: ``rules_doc`` turns it into
the tables of docs/rules.md (a unit test keeps the two in step), and the YAML
validation in ``rules`` derives each key's type from its default here. A
rules file changes a value by building a new instance (``dataclasses.replace``),
never by mutating one, so resolved settings can be shared between runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from rankstream.schema import RULES

Severity = Literal["info", "warning", "critical"]
WarmupMode = Literal["normal", "info", "suppress"]
WARMUP_MODES: tuple[WarmupMode, ...] = ("normal", "info", "suppress")


@dataclass(frozen=True)
class AlignmentParams:
    """How a run's steps are aligned across ranks and how long its state is kept."""

    grace_min_s: float = 30.0
    """a step missing ranks is released as partial once event time is this many seconds past its first event ..."""
    grace_steps: float = 5.0
    """... or this many median step times, whichever is longer"""
    max_steps_ahead: int = 100
    """... or when another rank is this many steps ahead"""
    max_pending_steps: int = 256
    """steps pending per run; beyond it the oldest pending step is released"""
    retention_s: float = 3600.0
    """a run with no event for this many seconds (event time) is evicted; runs whose ranks all sent `run_end`
    are evicted one grace period later"""
    median_window: int = 64
    """released steps used for the run's median step time (`step_time_s` mean, else `ts` deltas)"""
    dedup_window: int = 4096
    """out-of-order seqs remembered per rank; beyond it a gap (lost events) is given up"""
    revise_max_events: int = 16384
    """events of recently released partial steps kept per run so that late events can complete them (a
    revision); 0 turns revisions off"""


@dataclass(frozen=True)
class RuleParams:
    """The settings every rule has; each rule's class adds its thresholds and may change these defaults."""

    severity: Severity = "warning"
    """severity of an alert when the rule fires in its normal form (`info`, `warning`, `critical`)"""
    cooldown_steps: int = 50
    """steps during which the same (run, rule, ranks) stays quiet after an alert, unless the severity rises"""
    cooldown_points: int = 3
    """... and logged points it lasts at least: max(`cooldown_steps`, min(`cooldown_points`, `cooldown_steps`) x
    the run's logging interval) steps (at cadence 1 exactly `cooldown_steps`; see "Logging cadence")"""
    during_warmup: WarmupMode = "normal"
    """on warmup steps: `normal`, `info` (downgrade to info) or `suppress` (no alert)"""
    enabled: bool = True
    """false: the rule never alerts"""


@dataclass(frozen=True)
class NonfiniteLossParams(RuleParams):
    """nonfinite_loss: a rank's loss is NaN or inf."""

    severity: Severity = "critical"


@dataclass(frozen=True)
class NonfiniteGradParams(RuleParams):
    """nonfinite_grad: a rank's gradient norm is NaN or inf (fp16 loss-scaler aware)."""

    severity: Severity = "critical"
    fp16_severity: Severity = "info"
    """severity of a single fp16 overflow under a dynamic loss scale (the scaler skipping a step as designed)"""
    fp16_max_consecutive: int = 8
    """consecutive fp16 overflow steps from which the alert is a warning"""
    fp16_min_loss_scale: float = 1.0
    """fp16 loss scale (a multiplier) below which an overflow is critical (the scaler collapsed)"""


@dataclass(frozen=True)
class LossSpikeParams(RuleParams):
    """loss_spike: the mean loss jumps far above its recent window, once or for several steps."""

    during_warmup: WarmupMode = "info"
    window: int = 128
    """post-warmup steps of mean loss the spike is measured against"""
    min_samples: int = 32
    """steps the window needs before the rule can fire"""
    sigma: float = 6.0
    """standard deviations above the window mean that make a spike"""
    min_rel: float = 0.05
    """a spike must also be this fraction above the window mean (0.05 = 5%)"""
    critical_ratio: float = 10.0
    """loss at least this many times the window mean: critical at once"""
    sustained_ratio: float = 2.0
    """loss at least this many times the window mean counts towards a sustained spike"""
    sustained_steps: int = 5
    """consecutive steps at `sustained_ratio` that make a sustained (critical) spike; the window restarts"""


@dataclass(frozen=True)
class LossRisingParams(RuleParams):
    """loss_rising: the mean loss keeps going up, cleanly or through noise."""

    cooldown_steps: int = 100
    during_warmup: WarmupMode = "suppress"
    steps: int = 10
    """consecutive logged points the smoothed loss must rise (the clean reading)"""
    ewma_alpha: float = 0.1
    """smoothing factor of the loss EWMA per step, in (0, 1] (1 = no smoothing); a point logged k steps after
    the previous one weighs 1 - (1 - `ewma_alpha`)^k, so the smoothing spans the same steps at any cadence"""
    min_rel_rise: float = 0.02
    """the loss must have risen by at least this fraction (0.02 = 2%): the smoothed loss since the clean rise
    began, or the Theil-Sen slope over the trend window"""
    trend_window_steps: int = 100
    """steps the window of the robust trend test spans at least (the test also catches a noisy climb that
    never rises `steps` times in a row) ..."""
    trend_points: int = 20
    """... in this many bins of `trend_window_steps / trend_points` steps, each the mean of the points
    logged in it: at least this many logged points (a coarse cadence widens the window)"""
    trend_z: float = 4.0
    """Mann-Kendall score of that window from which the loss is rising (4 = one-sided p 3e-5: the test
    runs whenever a bin closes)"""


@dataclass(frozen=True)
class LossPlateauParams(RuleParams):
    """loss_plateau: the mean loss is statistically not improving (flat or worse), once per plateau."""

    cooldown_steps: int = 200
    during_warmup: WarmupMode = "suppress"
    patience: int = 200
    """steps the judged stretch spans at least (and the trend's history before the first judgement) ..."""
    window_frac: float = 0.25
    """... or this fraction of the steps since the loss trend began (end of warmup, resume), whichever is
    longer: a long run is judged over a long stretch, so a slow healthy descent is still a descent"""
    min_points: int = 12
    """logged points the stretch holds at least (it reaches further back at a coarse cadence); it is judged
    on the means of equal step bins (at most 64 over the trend's history, at least 8 in the stretch)"""
    z: float = 1.64
    """a stretch whose Mann-Kendall score is at or below -z is improving (1.64 = one-sided p 0.05); above,
    the loss shows no significant decrease ..."""
    pace_frac: float = 0.1
    """... and its decrease per step (Theil-Sen) is below this fraction of the run's average decrease per step
    since the trend began, when that decrease is significant (a stretch too short or too noisy to show a
    healthy descent is not a plateau; a loss that never fell since warmup is one) ..."""
    confirm: int = 8
    """... and a plateau is that reading at this many judgements in a row (one per closed bin: the stretch
    has moved on by about half its length, so one unlucky draw of noise is not a plateau); as many
    judgements in a row that find a decrease end the plateau (the next one alerts again)"""


@dataclass(frozen=True)
class GradExplosionParams(RuleParams):
    """grad_explosion: the gradient norm jumps far above its recent median."""

    during_warmup: WarmupMode = "info"
    window: int = 128
    """post-warmup steps of max-over-ranks `grad_norm` whose median is the baseline"""
    min_samples: int = 32
    """steps the window needs before the rule can fire"""
    ratio: float = 10.0
    """`grad_norm` at least this many times the window median fires a warning"""
    critical_ratio: float = 100.0
    """`grad_norm` at least this many times the window median is critical"""


@dataclass(frozen=True)
class GradVanishingParams(RuleParams):
    """grad_vanishing: the gradient norm collapses towards zero."""

    cooldown_steps: int = 100
    during_warmup: WarmupMode = "info"
    abs_threshold: float = 1e-7
    """`grad_norm` below this is vanishing, whatever its history"""
    rel_threshold: float = 1e-3
    """`grad_norm` below this fraction of the `grad_explosion` window median is vanishing"""
    min_samples: int = 32
    """steps the `grad_explosion` window needs before the relative test applies"""
    steps: int = 10
    """consecutive vanishing steps before the rule fires"""


@dataclass(frozen=True)
class AdapterGradVanishingParams(RuleParams):
    """adapter_grad_vanishing: LoRA adapter gradients vanish while the backbone is frozen."""

    cooldown_steps: int = 100
    during_warmup: WarmupMode = "info"
    abs_threshold: float = 1e-5
    """`grad_norm_adapter` below this is vanishing, whatever its history"""
    rel_threshold: float = 1e-3
    """`grad_norm_adapter` below this fraction of its window median is vanishing"""
    backbone_max: float = 1e-12
    """the rule only fires while `grad_norm_backbone` is at most this (a frozen backbone)"""
    window: int = 128
    """post-warmup steps of `grad_norm_adapter` whose median is the baseline"""
    min_samples: int = 32
    """steps the window needs before the relative test applies"""
    steps: int = 10
    """consecutive vanishing steps before the rule fires"""


@dataclass(frozen=True)
class StragglerParams(RuleParams):
    """straggler: one rank's own compute + data time is well above the others'."""

    cooldown_steps: int = 200
    score_threshold: float = 0.75
    """a rank is slow when median own time / its own time (`compute_time_s + data_time_s`) is below this"""
    min_extra_frac: float = 0.05
    """... and its own time exceeds the median by at least this fraction of the median step time ..."""
    min_extra_s: float = 0.005
    """... and by at least this many seconds (sub-millisecond jitter is not a straggler)"""
    skew_frac: float = 0.25
    """without those metrics: a rank whose `ts` is this many median step times after the median rank's"""
    persist_steps: int = 5
    """consecutive slow steps before the rule fires"""


@dataclass(frozen=True)
class RankLaggingParams(RuleParams):
    """rank_lagging: one rank's events are stamped or delivered after the others', by a step or persistently
    by a sizeable fraction of one."""

    cooldown_steps: int = 200
    skew_steps: float = 1.0
    """median step times by which a rank's `ts` trails the median rank's at the same step"""
    persist_steps: int = 5
    """consecutive lagging (or late-delivered) logged steps before the rule fires"""
    sub_step_skew: float = 0.25
    """a rank whose `ts` trails the median rank's by at least this many median step times (less than
    `skew_steps`), and is not a straggler at that step, lags by a fraction of a step ..."""
    sub_step_persist: int = 20
    """... for this many consecutive logged steps before the rule fires"""


@dataclass(frozen=True)
class RankSilentParams(RuleParams):
    """rank_silent: a rank sends nothing at all while others are alive."""

    severity: Severity = "critical"
    cooldown_steps: int = 1000
    min_s: float = 60.0
    """seconds of event time without any event from a rank before it is silent ..."""
    steps: float = 20.0
    """... or this many median step times, whichever is longer"""


@dataclass(frozen=True)
class RankHungParams(RuleParams):
    """rank_hung: a rank (or the whole job) is alive but makes no step progress."""

    severity: Severity = "critical"
    cooldown_steps: int = 1000
    min_s: float = 180.0
    """seconds of event time without step progress (events still arriving) before a rank is hung ..."""
    steps: float = 50.0
    """... or this many median step times, whichever is longer"""


@dataclass(frozen=True)
class MemoryPressureParams(RuleParams):
    """memory_pressure: a rank's peak GPU memory is close to the device's total."""

    cooldown_steps: int = 200
    warn_ratio: float = 0.92
    """`mem_peak_mb / mem_total_mb` of a rank at or above which it is under pressure"""
    critical_ratio: float = 0.98
    """ratio at or above which the alert is critical at once"""
    persist_steps: int = 3
    """consecutive logged steps above `warn_ratio` before a warning"""
    recover_steps: int = 3
    """consecutive logged steps below `warn_ratio` that end a rank's pressure (its alert resolves; a new one
    needs `persist_steps` again); a shorter dip does not restart the count"""


@dataclass(frozen=True)
class RunLostParams(RuleParams):
    """run_lost: every rank of a run went quiet without `run_end` (the whole job died or lost its network)."""

    severity: Severity = "critical"
    cooldown_steps: int = 1000
    min_s: float = 60.0
    """seconds since the last event of any rank (event time, or the worker's clock when nothing arrives) ..."""
    steps: float = 20.0
    """... or this many median step times, whichever is longer"""


@dataclass(frozen=True)
class MembershipChangedParams(RuleParams):
    """membership_changed: a `run_start` re-declared the run's world size (elastic shrink or grow, relaunch)."""

    severity: Severity = "info"
    cooldown_steps: int = 0


@dataclass(frozen=True)
class ClockSkewParams(RuleParams):
    """clock_skew: a rank's host clock runs at least 30 s off the other ranks' (found and corrected once)."""

    cooldown_steps: int = 1000


@dataclass(frozen=True)
class EvalLossRisingParams(RuleParams):
    """eval_loss_rising: the eval loss rises evaluation after evaluation while the train loss falls (overfitting)."""

    cooldown_steps: int = 0
    evals: int = 3
    """consecutive evaluations at which the mean eval loss (`eval_loss`, else `val_loss`, else `loss` of the
    `eval` events) rose; after an alert, as many new rises are needed"""
    min_rel_rise: float = 0.01
    """the eval loss must have risen by at least this fraction over them (0.01 = 1%), while the smoothed train
    loss fell between the first and the last of them"""


@dataclass(frozen=True)
class RuleSet:
    """Every rule's parameters for one run: the defaults, or the defaults with a rules file applied."""

    nonfinite_loss: NonfiniteLossParams = field(default_factory=NonfiniteLossParams)
    nonfinite_grad: NonfiniteGradParams = field(default_factory=NonfiniteGradParams)
    loss_spike: LossSpikeParams = field(default_factory=LossSpikeParams)
    loss_rising: LossRisingParams = field(default_factory=LossRisingParams)
    loss_plateau: LossPlateauParams = field(default_factory=LossPlateauParams)
    grad_explosion: GradExplosionParams = field(default_factory=GradExplosionParams)
    grad_vanishing: GradVanishingParams = field(default_factory=GradVanishingParams)
    adapter_grad_vanishing: AdapterGradVanishingParams = field(default_factory=AdapterGradVanishingParams)
    straggler: StragglerParams = field(default_factory=StragglerParams)
    rank_lagging: RankLaggingParams = field(default_factory=RankLaggingParams)
    rank_silent: RankSilentParams = field(default_factory=RankSilentParams)
    rank_hung: RankHungParams = field(default_factory=RankHungParams)
    memory_pressure: MemoryPressureParams = field(default_factory=MemoryPressureParams)
    run_lost: RunLostParams = field(default_factory=RunLostParams)
    membership_changed: MembershipChangedParams = field(default_factory=MembershipChangedParams)
    clock_skew: ClockSkewParams = field(default_factory=ClockSkewParams)
    eval_loss_rising: EvalLossRisingParams = field(default_factory=EvalLossRisingParams)

    def params(self, rule: str) -> RuleParams:
        """The parameters of the rule named ``rule`` (a name from ``rankstream.schema.RULES``)."""
        params: RuleParams = getattr(self, rule)
        return params

    def with_changes(self, changes: Mapping[str, Mapping[str, Any]]) -> RuleSet:
        """A copy with ``{rule: {key: value}}`` applied (already validated); ``self`` when nothing changes."""
        if not any(changes.values()):
            return self
        changed: dict[str, Any] = {rule: replace(self.params(rule), **kv) for rule, kv in changes.items() if kv}
        return replace(self, **changed)


#: Each rule's parameter class, in the contract's order.
RULE_PARAMS: dict[str, type[RuleParams]] = {f.name: type(getattr(RuleSet(), f.name)) for f in fields(RuleSet)}
assert tuple(RULE_PARAMS) == tuple(RULES), "every contract rule needs its parameters, in the contract's order"


def defaults_of(cls: type) -> dict[str, Any]:
    """Each field's default value: what a rules file may set, and the type it must have."""
    return {f.name: f.default for f in fields(cls)}
