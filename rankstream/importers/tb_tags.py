"""TensorBoard scalar tags -> trainer log keys, for the writers whose tags are known.

Each writer names the same quantity its own way; the tag is turned into the key
its trainer logs under (then :mod:`rankstream.metric_names` maps it, as for
every other importer), and into *train* or *eval*:

* Hugging Face ``TensorBoardCallback`` (``transformers/integrations/integration_utils.py``
  ``rewrite_logs``): ``train/loss``, ``train/learning_rate``, ``train/grad_norm``,
  ``train/epoch``, ``eval/loss`` (``eval_loss``), ``test/...`` (predictions: left out);
  the ``train()`` summary as ``train/train_runtime``, ``train/train_loss``...
* Megatron-LM (``megatron/training/training.py`` ``training_log`` and
  ``evaluate_and_print_results``): ``lm loss``, ``learning-rate``, ``grad-norm``,
  ``loss-scale``, ``iteration-time``, ``batch-size``..., each also as ``<tag> vs
  samples`` (the same value against consumed samples: left out); validation as
  ``lm loss validation`` and ``lm loss validation ppl`` (``-<name>`` for named sets).
* Lightning (``self.log(name)`` through ``TensorBoardLogger``): the user's names,
  by convention ``train_loss`` / ``val_loss`` or ``train/loss`` / ``val/loss``, with
  ``_step`` / ``_epoch`` suffixes when logged both ways; ``epoch``; ``hp_metric``
  (a placeholder -1: left out); ``LearningRateMonitor``'s ``lr-AdamW``.
* plain ``SummaryWriter.add_scalar``: any tag; ``Loss/train`` / ``Loss/val`` /
  ``Loss/test`` (the PyTorch tutorial's form, evaluated during training) are read as train and eval.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from rankstream.metric_names import is_known_key

TagKind = Literal["train", "eval"]

_EVAL_WORDS: Final = frozenset({"eval", "val", "valid", "validation"})
_SKIPPED_WORDS: Final = frozenset({"test"})
#: Megatron-LM: ``lm loss validation``, ``lm loss validation-<set> ppl``.
_MEGATRON_VALIDATION = re.compile(r"^(?P<key>.+?) validation(?:-(?P<set>\S+))?(?P<ppl> ppl)?$")
#: Lightning's ``LearningRateMonitor``: ``lr-<Optimizer>`` (and ``/pg<N>`` per extra param group).
_LR_MONITOR = re.compile(r"^lr-[A-Za-z0-9]+$")
_LIGHTNING_PLACEHOLDERS: Final = frozenset({"hp_metric"})


def tag_key(tag: str) -> tuple[TagKind, str] | None:
    """``(train|eval, trainer log key)`` for a scalar tag, or ``None`` for a tag that is no training metric.

    Eval keys get the ``eval_`` prefix the trainers' own logs use (``eval/loss`` -> ``eval_loss``), so that
    :func:`rankstream.metric_names.standard_name` names them as for a ``logging.jsonl``; a standard key written
    capitalized (the tutorial's ``Loss/train``) is read as the standard one.
    """
    mapped = _tag_key(tag)
    if mapped is None:
        return None
    kind, key = mapped
    return kind, _standard_case(key)


def _standard_case(key: str) -> str:
    prefix, rest = ("eval_", key[5:]) if key.startswith("eval_") else ("", key)
    lower = rest.lower()
    if lower != rest and is_known_key(lower):
        return prefix + lower
    return key


def _tag_key(tag: str) -> tuple[TagKind, str] | None:
    tag = tag.strip()
    if not tag or tag.endswith(" vs samples") or tag in _LIGHTNING_PLACEHOLDERS:
        return None
    if _LR_MONITOR.match(tag):
        return "train", "lr"
    validation = _MEGATRON_VALIDATION.match(tag)
    if validation:
        name = validation["key"] + (f"_{validation['set']}" if validation["set"] else "")
        return "eval", f"eval_{name}" + ("_ppl" if validation["ppl"] else "")
    if "/" in tag:
        head, rest = tag.split("/", 1)
        if head.lower() == "train":
            return "train", rest
        if head.lower() in _EVAL_WORDS:
            return "eval", f"eval_{rest}"
        if head.lower() in _SKIPPED_WORDS:
            return None
        tail_head, _, tail = tag.rpartition("/")
        if tail.lower() == "train":
            return "train", tail_head
        if tail.lower() in _EVAL_WORDS or tail.lower() in _SKIPPED_WORDS:  # the tutorial's Loss/test: held-out
            return "eval", f"eval_{tail_head}"
        return "train", tag
    return _lightning_key(tag)


def _lightning_key(tag: str) -> tuple[TagKind, str] | None:
    """``train_loss_step`` -> loss, ``val_loss`` -> eval_loss; ``_epoch`` aggregates keep their suffix."""
    head, sep, rest = tag.partition("_")
    if not sep or not rest:
        return "train", tag
    if head == "train":
        return "train", rest.removesuffix("_step")
    if head in _EVAL_WORDS:
        return "eval", f"eval_{rest.removesuffix('_step')}"
    if head in _SKIPPED_WORDS:
        return None
    return "train", tag
