"""Declared rules for the values lightseg reads from files: recipe keys (:mod:`lightseg.config`), checkpoint
metadata (:mod:`lightseg.checkpoint`) and the weights manifest (:mod:`lightseg.weights`). A rule says what type
and range a value must have, in words for the message that refuses it."""
from __future__ import annotations

import math


class Rule:
    """``ok(value) -> bool`` and the words for what is expected (``choices``: for a 'did you mean')."""

    def __init__(self, expected: str, ok, null: bool = False, choices=None):
        self.expected = f"{expected} or null" if null else expected
        self.ok = (lambda v: v is None or ok(v)) if null else ok
        self.choices = choices


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo=None, null=False) -> Rule:
    words = "an integer" if lo is None else ("a positive integer" if lo == 1 else f"an integer >= {lo}")
    return Rule(words, lambda v: is_int(v) and (lo is None or v >= lo), null)


def number(lo=None, hi=None, lo_open=False, hi_open=False, null=False, what="a number") -> Rule:
    words = [what if lo is None and hi is None else what.replace("a number", "a finite number")]
    if lo is not None:
        words.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        words.append(f"{'and ' if lo is not None else ''}{'<' if hi_open else '<='} {hi}")
    return Rule(" ".join(words), lambda v: is_num(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)), null)


def one_of(*values) -> Rule:
    return Rule("one of " + ", ".join("null" if c is None else str(c) for c in values),
                lambda v: any(v == c and type(v) is type(c) for c in values), choices=values)


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def string(null=False) -> Rule:
    return Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v), null)


def list_of(item_ok, expected, length=None, null=False, empty=False) -> Rule:
    return Rule(expected, lambda v: isinstance(v, list) and (empty or len(v) > 0) and (length is None or len(v) == length)
                and all(item_ok(x) for x in v), null)


MAPPING = Rule("a mapping", lambda v: isinstance(v, dict), null=True)


def first_violation(values: dict, rules: dict):
    """``(key, value, expected)`` for the first key of ``rules`` present in ``values`` whose value breaks its
    rule, or None. Keys absent from ``values`` are not checked (older files lack some)."""
    for key, rule in rules.items():
        if key in values and not rule.ok(values[key]):
            return key, values[key], rule.expected
    return None


# Rules shared by checkpoint metadata and weights-manifest records (both describe trained weights).
NORMALIZE_NAMES = ("imagenet", "minus_one_one")  # lightseg.data.base.NORMALIZATIONS
CLASS_NAMES = Rule("a list of class names (non-empty strings)",
                   lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(c, str) and c for c in v),
                   null=True)
PALETTE = Rule("a list of [R, G, B] triples of integers 0..255",
               lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(
                   isinstance(c, (list, tuple)) and len(c) == 3 and all(is_int(x) and 0 <= x <= 255 for x in c) for c in v),
               null=True)
NORMALIZE = one_of(None, *NORMALIZE_NAMES)
IGNORE_INDEX = integer(0, null=True)
CHANNEL_ORDER = one_of(None, "RGB")
