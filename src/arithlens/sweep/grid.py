"""The grid of a sweep: which training flags vary, their values, and one validated RunConfig per cell.

Every key is a training flag of `arithlens train` (cli.TRAINING_OPTIONS, the one
declaration of them), and every value is converted with that flag's own type and
validated by building the cell's RunConfig exactly as `arithlens train` would.
A value holding a comma is an axis (`--seed 1,2,3`); a single value is fixed for
every cell. `--betas` takes B1,B2 itself, so its axes (and any value that holds
a ';') split on ';' instead: `--betas "0.9,0.98;0.9,0.95"`.

All cells are built before any is run, so one bad value stops the sweep before
it trains anything.
"""

from __future__ import annotations

import inspect
import itertools
import re
import shlex
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

from arithlens.config import RunConfig
from arithlens.errors import ArithlensError, ConfigError

# Training flags that name one run's folder or how it is shown; a sweep has its own.
NOT_SWEPT = frozenset({"out", "force", "resume", "no_progress"})
# Flags whose single value is itself comma-separated: their axes split on ';' only.
COMMA_VALUED = frozenset({"betas"})
AXIS_SEPARATOR = ";"
GridValue = str | int | float | Sequence[str | int | float] | None


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its folder name, the grid values as given, and its resolved config."""

    name: str
    values: dict[str, str]
    config: RunConfig
    command: str  # the `arithlens train` line that trains this cell alone (into its folder, given at run time)


@dataclass(frozen=True)
class SweepPlan:
    """The axes (flag -> values, in the order given), the fixed flags, and every cell."""

    axes: dict[str, list[str]]
    fixed: dict[str, str]
    cells: list[Cell]

    def typed_values(self, cell: Cell) -> dict[str, Any]:
        """A cell's grid values converted to their flags' types (seed 1, not "1"), for tables."""
        options = _options_by_name()
        return {name: convert(options[name], text) for name, text in cell.values.items()}

    def flag_arguments(self) -> list[str]:
        """The grid as command-line arguments: ["--seed", "1,2", "--steps", "300", ...]."""
        options = _options_by_name()
        joined = {name: (AXIS_SEPARATOR if name in COMMA_VALUED else ",").join(values)
                  for name, values in self.axes.items()}
        return [part for name, text in {**joined, **self.fixed}.items() for part in (flag_of(options[name]), text)]

    def typed_axes(self) -> dict[str, list[Any]]:
        """Each axis's values converted to the flag's type, in the order given."""
        options = _options_by_name()
        return {name: [convert(options[name], text) for text in values] for name, values in self.axes.items()}


def flag_of(parameter: inspect.Parameter) -> str:
    """The command-line flag of a TRAINING_OPTIONS parameter, e.g. `--d-model` for d_model."""
    info = typing.get_args(parameter.annotation)[1]
    declared = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str) and d.startswith("--")]
    return declared[0] if declared else "--" + parameter.name.replace("_", "-")


def _value_type(parameter: inspect.Parameter) -> type:
    """int, float or str: the type typer converts the training flag's value to."""
    kind = typing.get_args(parameter.annotation)[0]
    inner = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]  # Optional[int] -> int
    return inner[0]


def grid_options(training_options: Sequence[inspect.Parameter]) -> tuple[inspect.Parameter, ...]:
    """The sweep command's form of the training options: the same flags and help, each taking text."""
    swept = []
    for parameter in training_options:
        if parameter.name in NOT_SWEPT:
            continue
        info = typing.get_args(parameter.annotation)[1]
        separator = f"'{AXIS_SEPARATOR}'" if parameter.name in COMMA_VALUED else "commas"
        help_text = f"{info.help} Several values separated by {separator} make a sweep axis."
        annotation = Annotated[Optional[str], typer.Option(flag_of(parameter), help=help_text)]
        swept.append(parameter.replace(annotation=annotation, default=None, kind=inspect.Parameter.KEYWORD_ONLY))
    return tuple(swept)


def _training_flags() -> tuple[tuple[inspect.Parameter, ...], Any]:
    # Imported here, not at the top: cli imports this module to declare the sweep command.
    from arithlens.cli import TRAINING_OPTIONS, run_config_from_flags

    return tuple(p for p in TRAINING_OPTIONS if p.name not in NOT_SWEPT), run_config_from_flags


def _options_by_name() -> dict[str, inspect.Parameter]:
    return {p.name: p for p in _training_flags()[0]}


def split_values(name: str, text: str) -> list[str]:
    """The values of one flag as given: "1,2,3" -> ["1", "2", "3"] (';' for --betas and values holding ';')."""
    separator = AXIS_SEPARATOR if name in COMMA_VALUED or AXIS_SEPARATOR in text else ","
    return [part.strip() for part in text.split(separator)]


def convert(parameter: inspect.Parameter, text: str) -> Any:
    """One value converted with the training flag's type, or one clear error naming the flag."""
    kind = _value_type(parameter)
    flag = flag_of(parameter)
    if text == "":
        raise ConfigError(f"{flag} has an empty value; separate values with single commas, e.g. {flag} 1,2")
    try:
        return kind(text)
    except ValueError:
        noun = {int: "a whole number", float: "a number"}.get(kind, "a value")
        raise ConfigError(f"{flag} takes {noun}; {text!r} is not one") from None


def _normalise(name: str, value: GridValue) -> list[str] | None:
    """A grid value from Python or the CLI as a list of texts (None: not given)."""
    if value is None:
        return None
    if isinstance(value, str):
        return split_values(name, value)
    if isinstance(value, Sequence):
        return [str(v).strip() for v in value]
    return [str(value)]


def _safe(text: str) -> str:
    """A value as it may appear in a folder name: 5% -> 5pct, 0.9,0.98 -> 0.9-0.98."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text.replace("%", "pct")).strip("-") or "empty"


def cell_name(values: Mapping[str, str]) -> str:
    """The folder name of a cell: its grid values by flag name, e.g. {seed: 1, layers: 2} -> layers-2_seed-1."""
    return "_".join(f"{name.replace('_', '-')}-{_safe(values[name])}" for name in sorted(values))


def _command(options: dict[str, inspect.Parameter], given: Mapping[str, str]) -> str:
    flags = [part for name, text in given.items() for part in (flag_of(options[name]), text)]
    return "arithlens train " + " ".join(shlex.quote(part) for part in flags)


def plan_sweep(grid: Mapping[str, GridValue]) -> SweepPlan:
    """Every cell of the grid, each with its validated RunConfig; nothing is run.

    `grid` maps training option names (d_model, not --d-model) to a value or
    several: "1,2,3", [1, 2, 3], 300. A name that is not a training flag, a
    value of the wrong type, a cell whose config is invalid, two values that
    give the same config, or a grid without an axis is an ArithlensError.
    """
    options, build = _training_flags()
    by_name = {p.name: p for p in options}
    unknown = sorted(name for name, value in grid.items() if value is not None and name not in by_name)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise ConfigError(f"{flags} is not a training flag a sweep can vary; use flags of `arithlens train`")
    given = {name: values for name, value in grid.items() if (values := _normalise(name, value)) is not None}
    for name, values in given.items():
        for text in values:
            convert(by_name[name], text)  # every value's type, before any config is built
    axes = {name: values for name, values in given.items() if len(values) > 1}
    fixed = {name: values[0] for name, values in given.items() if len(values) == 1}
    if not axes:
        raise ConfigError("a sweep needs at least one axis: give a training flag several values separated by "
                          "commas, e.g. --seed 1,2,3")
    for name, values in axes.items():
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{flag_of(by_name[name])} lists {', '.join(repeated)} more than once")
    defaults = {p.name: p.default for p in options}
    cells: list[Cell] = []
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination))
        chosen = {**fixed, **values}
        flags = {**defaults, **{name: convert(by_name[name], text) for name, text in chosen.items()}}
        flags.update(out=None, force=False, resume=None, no_progress=True)
        try:
            config: RunConfig = build(flags)
        except ArithlensError as error:
            where = ", ".join(f"{flag_of(by_name[k])} {v}" for k, v in values.items())
            raise type(error)(f"the cell {where}: {error}") from None
        cells.append(Cell(cell_name(values), values, config, _command(by_name, chosen)))
    _check_distinct(cells)
    return SweepPlan(axes, fixed, cells)


def _check_distinct(cells: list[Cell]) -> None:
    """No two cells may share a folder, or train the same config twice (e.g. --lr 0.001,1e-3)."""
    names: dict[str, Cell] = {}
    configs: dict[str, Cell] = {}
    for cell in cells:
        if cell.name in names:
            raise ConfigError(f"two cells would share the folder name {cell.name} ({names[cell.name].values} and "
                              f"{cell.values}); give the values differently")
        names[cell.name] = cell
        key = repr(cell.config.to_dict())
        if key in configs:
            raise ConfigError(f"the cells {configs[key].name} and {cell.name} are the same run (the same resolved "
                              f"config); drop one of the values")
        configs[key] = cell
