"""How an option is declared: a field of a frozen part (``option``, ``part``, ``Part``) that carries its type,
default, choices and help, and the parsers that check its values. The model's part (``itm.models.config``)
and the training options (``itm.options``) are both made of these, so this module sits below both and
imports neither.
"""
from __future__ import annotations

import functools
import math
from dataclasses import field, fields

from .errors import ConfigError


# ---------------------------------------------------------------- value parsers (they also check presets)

def positive_int(text) -> int:
    value = _number(text, int)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text) -> int:
    value = _number(text, int)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def positive_float(text) -> float:
    value = _number(text, float)
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def nonnegative_float(text) -> float:
    value = _number(text, float)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def fraction(text) -> float:
    value = _number(text, float)
    if not 0 <= value < 1:
        raise ValueError(f"must lie in [0, 1), got {value}")
    return value


def seed_value(text) -> int:
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise ValueError(f"must lie in [0, 2**32), got {value}")
    return value


def _number(text, kind):
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"{text!r} is not a number")
    if kind is int and isinstance(text, float) and not (math.isfinite(text) and text.is_integer()):
        raise ValueError(f"must be a whole number, got {text!r}")  # a config's 4.7 is not silently 4
    try:
        value = kind(text)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text}")
    return value


def in_range(kind, low, high, low_open: bool = False):
    """A parser of a number of ``kind`` in [low, high] ((low, high] with ``low_open``): the sane range of an
    option, checked before anything is built, so a typo (100000 layers, 1e308) is one line, not a hang or a
    traceback deep in TensorFlow."""
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text):
        value = _number(text, kind)
        if not ((low < value) if low_open else (low <= value)):
            raise ValueError(f"must be {'greater than' if low_open else 'at least'} {low:g}, got {value:g}")
        if value > high:
            raise ValueError(f"must lie in {shown}, got {value:g}")
        return value
    parse.__name__ = f"{kind.__name__} in {shown}"
    return parse


def text_value(text) -> str:
    """A path or a name: a string (a config's 12345 or true is refused, not taken as a folder named so)."""
    if not isinstance(text, str):
        raise ValueError(f"must be a text (a path or a name), got {text!r}")
    if not text or "\0" in text:
        raise ValueError(f"must be a non-empty text without NUL, got {text!r}")
    return text


def flag(name: str) -> str:
    return name.replace("_", "-")


# ---------------------------------------------------------------- a part and its options

def option(default, help: str, parse=None, choices=None, metavar: str | None = None, absent: str | None = None):
    """A field of a part that is also a command-line option (``--name-with-dashes``). ``absent``: in a
    part that can be absent (``Backbone``, ``Contrastive``), what the option is for, said when it is given
    where that part is not (``{image_tower}`` and the like name the other options' values)."""
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices, "metavar": metavar,
                                            "absent": absent})


def part(kind, when=None):
    """A field holding a part: always there (``when`` None), or only where ``when(options)`` is true (the
    flat options, defaults filled in), else None."""
    if when is None:
        return field(default_factory=kind, metadata={"part": kind})
    return field(default=None, metadata={"part": kind, "when": when})


class Part:
    """A frozen dataclass of options and of smaller parts. Every option below it reads flat too
    (``config.image_weights``: the backbone's, or its default where the model has no backbone), and a part is
    made from flat options (``from_flat``) and written back to them (``flat``) or to JSON by part
    (``to_json``)."""

    @classmethod
    @functools.cache
    def leaves(cls) -> dict:
        """Every option below this part: flat name -> (attribute path, field), in declaration order."""
        found = {}
        for f in fields(cls):
            kind = f.metadata.get("part")
            if kind is None:
                found[f.metadata.get("flat", f.name)] = ((f.name,), f)
            else:
                found.update({name: ((f.name, *path), leaf) for name, (path, leaf) in kind.leaves().items()})
        return found

    @classmethod
    def defaults(cls) -> dict:
        return {name: leaf.default for name, (_, leaf) in cls.leaves().items()}

    @classmethod
    def from_flat(cls, options: dict, misplaced: list | None = None):
        """This part from flat options (others are ignored; missing ones take their defaults). An option
        given, not at its default, where its part is absent (``--freeze-backbone`` with a tower trained from
        scratch) is one message in ``misplaced``, or a ConfigError without it; an absent part's option
        without an ``absent`` message (``--temperature`` under the kl objective) has nothing to set and is
        left out."""
        found = [] if misplaced is None else misplaced
        made = cls._made({**cls.defaults(), **options}, options, found)
        if misplaced is None and found:
            raise ConfigError(found[0] if len(found) == 1 else
                              "these options do not go together:\n" + "\n".join(f"  - {m}" for m in found))
        return made

    @classmethod
    def _made(cls, full: dict, given: dict, misplaced: list):
        values = {}
        for f in fields(cls):
            kind = f.metadata.get("part")
            if kind is None:
                values[f.name] = full[f.metadata.get("flat", f.name)]
            elif f.metadata.get("when") is None or f.metadata["when"](full):
                values[f.name] = kind._made(full, given, misplaced)
            else:
                values[f.name] = None
                for name, (_, leaf) in kind.leaves().items():
                    if leaf.metadata["absent"] and name in given and given[name] != leaf.default:
                        misplaced.append(f"--{flag(name)} {leaf.metadata['absent'].format(**full)}")
        return cls(**values)

    @classmethod
    @functools.cache
    def part_names(cls) -> frozenset:
        """The names of the parts below this one (the keys ``to_json`` writes a part under)."""
        names = set()
        for f in fields(cls):
            if f.metadata.get("part") is not None:
                names |= {f.name, *f.metadata["part"].part_names()}
        return frozenset(names)

    def value_of(self, name: str):
        """The value of option ``name`` below this part (an absent part's at its default)."""
        path, leaf = type(self).leaves()[name]
        value = self
        for step in path:
            if value is None:
                return leaf.default
            value = getattr(value, step)
        return value

    def flat(self) -> dict:
        """Every option below this part, flat (an absent part's at their defaults): config.json's form."""
        return {name: self.value_of(name) for name in self.leaves()}

    def to_json(self) -> dict:
        """This part by part, JSON-ready (an absent part is null; each option under its flat name)."""
        return {f.metadata.get("flat", f.name): (getattr(self, f.name).to_json() if f.metadata.get("part") and
                                                 getattr(self, f.name) else getattr(self, f.name))
                for f in fields(self)}

    @classmethod
    def from_json(cls, saved: dict):
        """The part that ``to_json`` wrote, or flat options (config.json's form): both load."""
        return cls.from_flat(flatten(saved, cls.part_names()), misplaced=[])

    def replace(self, **options):
        """This part with some flat options changed (``dataclasses.replace`` takes only its own fields)."""
        unknown = sorted(set(options) - set(self.leaves()))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no option(s) {', '.join(unknown)}")
        return self.from_flat({**self.flat(), **options})

    def __getattr__(self, name):  # only for names that are not fields: the options of the parts below
        if name.startswith("__") or name not in type(self).leaves():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.value_of(name)


def flatten(saved: dict, part_names=frozenset()) -> dict:
    """Flat options from a part written by ``Part.to_json`` (nested dicts; null for an absent part, one of
    ``part_names``) or from flat ones (they stay as they are)."""
    flat = {}
    for key, value in saved.items():
        if isinstance(value, dict):
            flat.update(flatten(value, part_names))
        elif value is not None or key not in part_names:
            flat[key] = value
    return flat
