"""Settings declared once: dataclass fields whose metadata carries the command-line flag, its help
and its valid range, so a default lives in one place and the CLI is generated from it.

    @dataclass
    class Settings:
        n_val: int = option(32, "validation prompts", minimum=1)

`add_options(group, Settings)` adds `--n-val` (help ending in "(default: 32)");
`from_args(Settings, args)` builds the object from parsed flags, checking each range with a
one-line error. `after_search=True` marks targeted settings that act only after the search.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from steer.errors import SteerError


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    cli: bool = True,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    choices: tuple | dict | None = None,
    parse=None,
    metavar: str | None = None,
    after_search: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its CLI metadata. choices: allowed values, or {CLI word: value};
    parse: a function from the flag's text to the value (default: the default's type)."""
    meta = {
        "help": help,
        "flag": flag,
        "cli": cli,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "choices": choices,
        "parse": parse,
        "metavar": metavar,
        "after_search": after_search,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"steer": meta})


def _meta(f: dataclasses.Field) -> dict:
    return f.metadata.get("steer", {"cli": False})


def flag_name(f: dataclasses.Field) -> str:
    """A field's command-line flag: its `flag`, else --field-name (underscores as hyphens)."""
    return _meta(f).get("flag") or "--" + f.name.replace("_", "-")


def dest_name(f: dataclasses.Field) -> str:
    """Where a field's flag is stored in the parsed arguments: the flag's name (--search-kl-max -> search_kl_max), so
    two settings objects with a field of the same name but different flags (Settings.kl_max as --kl-max,
    TargetedSettings.kl_max as --search-kl-max) never share a value."""
    return flag_name(f)[2:].replace("-", "_")


def cli_fields(cls, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of cls that have a command-line flag (option(..., cli=True)), limited to `only`, less `exclude`."""
    return [
        f
        for f in dataclasses.fields(cls)
        if _meta(f)["cli"] and (only is None or f.name in only) and f.name not in exclude
    ]


def _shown(value: Any, choices) -> str:
    if isinstance(choices, dict):  # show the CLI word for the default value
        value = next((word for word, v in choices.items() if v == value), value)
    return "none" if value is None else str(value)


def add_options(group, cls, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Add a flag for each CLI field of cls to an argparse parser or group; flags the parser already
    has (settings shared by two objects, e.g. --seed) are left as they are. dest = dest_name (the flag's name)."""
    for f in cli_fields(cls, only, exclude):
        m, name = _meta(f), flag_name(f)
        if name in group._option_string_actions:
            continue
        help_ = f"{m['help']} (default: {_shown(f.default, m['choices'])})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": dest_name(f), "default": f.default, "help": help_}
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            kw["type"] = m["parse"] or type(f.default)
            if m["choices"] is not None:
                kw["choices"] = tuple(m["choices"])
                if isinstance(m["choices"], dict):
                    kw["type"], kw["default"] = str, _shown(f.default, m["choices"])
            if m["metavar"]:
                kw["metavar"] = m["metavar"]
        group.add_argument(name, **kw)


def _check(f: dataclasses.Field, value: Any) -> None:
    m, name = _meta(f), flag_name(f)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, above, hi = m["minimum"], m["above"], m["maximum"]
    if above is not None and hi is not None and not above < value <= hi:
        raise SteerError(f"{name} must be in ({above:g}, {hi:g}]")
    if above is not None and not value > above:
        raise SteerError(f"{name} must be positive" if above == 0 else f"{name} must be above {above:g}")
    if lo is not None and value < lo:
        raise SteerError(f"{name} must be {'0 or more' if lo == 0 else f'at least {lo:g}'}")
    if hi is not None and value > hi:
        raise SteerError(f"{name} must be at most {hi:g}")


def from_args(cls, args: argparse.Namespace, **overrides):
    """cls built from the parsed flags it has a field for (others keep their defaults), each range checked."""
    values = {}
    for f in cli_fields(cls):
        if hasattr(args, dest_name(f)):
            value = getattr(args, dest_name(f))
            choices = _meta(f)["choices"]
            values[f.name] = choices[value] if isinstance(choices, dict) else value
            _check(f, values[f.name])
    return cls(**{**values, **overrides})


def after_search(cls) -> tuple[str, ...]:
    """Names of the fields marked after_search=True."""
    return tuple(f.name for f in dataclasses.fields(cls) if _meta(f).get("after_search"))


def none_or_float(text: str) -> float | None:
    """A flag value that is a number or 'none'."""
    return None if text.lower() == "none" else float(text)
