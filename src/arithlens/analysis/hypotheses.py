"""Hypothesis files: algorithm claims ("clauses") written in TOML or as `Clause` objects, checked against a model.

The published work states its algorithm as clauses that filter tagged nodes
("A4's BaseAdd is done at a position no later than A3's"). arithlens states
the same claims here and `arithlens.analysis.clauses` tests each one causally,
by patching question pairs that differ in exactly the sub-task it names.

A file holds an optional `title`, an optional `n_digits` (the digit count it
was written for) and one `[[clause]]` table per claim::

    title = "my hypothesis"
    n_digits = 5

    [[clause]]
    name = "A3 BaseAdd"                 # optional; errors and tables name the clause by it (else #1, #2, ...)
    claim = "A3's BaseAdd is computed at P13 by a head that attends to D3 and D'3"   # optional free text
    answer_digit = "A3"                 # or 3
    subtask = "BaseAdd"                 # BaseAdd | MakeCarry1 | MakeSum9 | UseSum9
    position = 13                       # or "P13"; or node = "P13L0H1"; or nodes = ["P13L0H1", "P13L0M"]
    attends_to = ["D3", "D'3"]          # with position: patch only the heads there that attend to these
    expect = "computed"                 # or "absent"

The rest of a clause's fields, with their defaults: `pair` (the digit pair the
sub-task is about: BaseAdd reads pair d, MakeCarry1 and MakeSum9 pair d-1,
UseSum9 pair d-2, a carry out of it cascading through a sum-9 pair d-1),
`min_attention = 0.5` (the share of a head's attention that must fall on the
`attends_to` positions for it to count as attending to them) and
`margin = 0.1` (how large an effect an "absent" clause tolerates).

Which questions and what is patched:

- a clause about its answer digit's own sub-task (the pair it names is the
  sub-task's pair for that digit) is a "patch" test: pairs of the matching
  `patching` kind, which differ in that sub-task and in A_d. With no place
  named, it patches every node at the position predicting A_d.
- an "absent" clause may name a pair whose sub-task feeds another digit
  ("A0 needs no UseSum9": the role does not exist for A0). That is an
  "invariance" test: that sub-task's pairs, kept only where A_d's true value
  is the same in both questions, and A_d must not move. With no pair given it
  uses the lowest pair at or above A_d's own that can vary without changing
  A_d (the pair below for A_n); with no place named, it compares the two
  questions themselves.

`resolve_clauses` checks every field against a model (digits, layers, heads,
positions) and raises `ClauseError` ("FILE clause NAME: what is wrong and how
to fix it") before any work is done.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from arithlens.analysis.naming import node_name, parse_node_name
from arithlens.analysis.patching import PAIR_KINDS, pair_kinds
from arithlens.config import ModelConfig
from arithlens.errors import ArithlensError
from arithlens.task import AdditionTask

SUBTASKS = PAIR_KINDS  # the sub-tasks a clause can name: each has question pairs that differ in it alone
EXPECTS = ("computed", "absent")
PAIR_OFFSET = {"BaseAdd": 0, "MakeCarry1": 1, "MakeSum9": 1, "UseSum9": 2}  # A_d's pair for the sub-task: d - offset
SHIPPED = ("published_1layer",)  # hypothesis files installed with arithlens (src/arithlens/hypotheses/NAME.toml)
_TOP_LEVEL = ("title", "n_digits", "clause")
Fail = Callable[[str], NoReturn]  # raises a ClauseError that names the file and the clause


class ClauseError(ArithlensError):
    """A hypothesis file or clause that cannot be tested; the message names the file and the clause."""


@dataclass(frozen=True)
class Clause:
    """One claim about where and whether a model computes a sub-task for an answer digit (see the module docstring)."""

    answer_digit: str | int
    subtask: str
    name: str = ""
    claim: str = ""
    pair: int | None = None
    position: int | str | None = None
    node: str | None = None
    nodes: tuple[str, ...] = ()
    attends_to: tuple[str, ...] = ()
    expect: str = "computed"
    min_attention: float = 0.5
    margin: float = 0.1

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; tuples keep the clause hashable and immutable.
        for name in ("nodes", "attends_to"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class Hypotheses:
    """The clauses of one file (or list), with where they came from for error messages."""

    clauses: tuple[Clause, ...]
    source: str = "<clauses>"
    title: str = ""
    n_digits: int | None = None


@dataclass(frozen=True)
class ResolvedClause:
    """A clause checked against a model, with everything the test needs as numbers.

    `sites` are (position, layer, head or None for the MLP) to patch; None means
    "the whole question" (an invariance test with no place named). With
    `keys`, the heads at `position` are picked at test time by their attention
    to those key positions.
    """

    clause: Clause
    label: str
    digit: int
    kind: str
    pair: int
    pair_digit: int  # the answer digit whose pair kind supplies the questions
    test: str  # "patch" or "invariance"
    target: int  # the position predicting A_digit
    sites: tuple[tuple[int, int, int | None], ...] | None
    position: int | None = None
    keys: tuple[int, ...] = field(default=())

    @property
    def place(self) -> str:
        """What is patched, in words: node names, the heads picked by attention, or the whole question."""
        if self.keys:
            return f"heads at P{self.position} attending to {', '.join(self.clause.attends_to)}"
        if self.sites is None:
            return "the whole question"
        return ", ".join(node_name(*site) for site in self.sites)


def _label(clause: Clause, index: int) -> str:
    return f'"{clause.name}"' if clause.name else f"#{index + 1}"


# ----- reading ---------------------------------------------------------------


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    try:
        import tomli  # the same parser, for Python 3.10
    except ImportError:
        raise ClauseError("reading hypothesis files needs Python 3.11 (tomllib) or the tomli package; "
                          "on Python 3.10 use `pip install tomli`, or pass Clause objects from Python") from None
    return tomli


def _syntax_error(text: str, source: str, error: Exception) -> ClauseError:
    """Say which clause a TOML syntax error is in: count the [[clause]] headers above its line."""
    match = re.search(r"at line (\d+)", str(error))
    line = int(match.group(1)) if match else None
    above = text.splitlines()[: line] if line else []
    starts = [i for i, row in enumerate(above) if re.match(r"\s*\[\[\s*clause\s*\]\]", row)]
    if not starts:
        return ClauseError(f"{source}: invalid TOML: {error}")
    names = re.findall(r'^\s*name\s*=\s*"([^"]*)"', "\n".join(above[starts[-1]:]), flags=re.MULTILINE)
    label = f'"{names[0]}"' if names else f"#{len(starts)}"
    return ClauseError(f"{source} clause {label}: invalid TOML: {error}")


def parse_hypotheses(text: str, source: str = "<string>") -> Hypotheses:
    """Clauses from TOML text (see the module docstring for the format)."""
    toml = _toml()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as error:
        raise _syntax_error(text, source, error) from None
    return hypotheses_from_dict(data, source)


def hypotheses_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Hypotheses:
    """Clauses from parsed TOML: {"title": ..., "n_digits": ..., "clause": [{...}, ...]}."""
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ClauseError(f"{source}: unknown top-level key {unknown[0]!r}; a hypothesis file holds title, n_digits "
                          f"and [[clause]] tables (is a clause field above the first [[clause]]?)")
    title, n_digits, tables = data.get("title", ""), data.get("n_digits"), data.get("clause", [])
    if not isinstance(title, str):
        raise ClauseError(f"{source}: title must be a string")
    if n_digits is not None and (not isinstance(n_digits, int) or isinstance(n_digits, bool) or n_digits < 1):
        raise ClauseError(f"{source}: n_digits must be a whole number >= 1, got {n_digits!r}")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ClauseError(f"{source}: clauses are [[clause]] tables")
    if not tables:
        raise ClauseError(f"{source}: no clauses; add [[clause]] tables (answer_digit, subtask, ...)")
    clauses = tuple(_clause_from_table(table, index, source) for index, table in enumerate(tables))
    return Hypotheses(clauses, source, title, n_digits)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "answer_digit": (str, int), "subtask": (str,), "name": (str,), "claim": (str,), "pair": (int,),
    "position": (int, str), "node": (str,), "nodes": (list, tuple), "attends_to": (list, tuple), "expect": (str,),
    "min_attention": (float, int), "margin": (float, int),
}
_TYPE_WORDS = {str: "a string", int: "a whole number", float: "a number", list: "a list", tuple: "a list"}


def _check_types(values: Mapping[str, Any], where: str) -> None:
    """Every field known and of its type (None where a field may be left out); TOML and Python clauses alike."""
    names = [f.name for f in fields(Clause)]
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; fields are {', '.join(names)}"
            raise ClauseError(f"{where}: unknown field {key!r}{hint}")
        if value is None and key in ("pair", "position", "node"):
            continue
        listed = value if isinstance(value, (list, tuple)) else ()
        if (isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[key])
                or not all(isinstance(item, str) for item in listed)):
            wanted = " or ".join(_TYPE_WORDS[t] for t in _FIELD_TYPES[key])
            wanted = "a list of strings" if listed or wanted == "a list or a list" else wanted
            raise ClauseError(f"{where}: {key} must be {wanted}, got {value!r}")


def _clause_from_table(table: Mapping[str, Any], index: int, source: str) -> Clause:
    name = table.get("name", "")
    label = f'"{name}"' if isinstance(name, str) and name else f"#{index + 1}"
    _check_types(table, f"{source} clause {label}")
    for key in ("answer_digit", "subtask"):
        if key not in table:
            raise ClauseError(f"{source} clause {label}: {key} is missing (e.g. answer_digit = \"A3\", "
                              f"subtask = \"BaseAdd\")")
    return Clause(**{key: tuple(value) if isinstance(value, list) else value for key, value in table.items()})


def shipped_hypotheses_dir() -> Path:
    return Path(str(resources.files("arithlens") / "hypotheses"))


def read_hypotheses(path_or_name: str | Path) -> Hypotheses:
    """A hypothesis file, or a shipped one by name (`published_1layer`)."""
    path = Path(path_or_name)
    if not path.is_file() and str(path_or_name) in SHIPPED:
        path = shipped_hypotheses_dir() / f"{path_or_name}.toml"
    if not path.is_file():
        raise ClauseError(f"no hypothesis file {path_or_name} (shipped ones: {', '.join(SHIPPED)})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ClauseError(f"cannot read {path_or_name}: {error}") from None
    return parse_hypotheses(text, str(path_or_name))


# ----- the published 1-layer algorithm ---------------------------------------


def published_clauses(n_digits: int) -> list[Clause]:
    """The published 1-layer algorithm for `n_digits`: src/arithlens/hypotheses/published_1layer.toml for 5.

    At the position predicting A_d one head reads each of the pairs d
    (BaseAdd), d-1 (MakeCarry1, and with MakeSum9 the tri-state of that pair)
    and d-2 (UseSum9). Roles that cannot exist are "absent" invariance clauses
    where a question pair can still test them (A_n's BaseAdd, A0's carry in,
    A0's and A1's UseSum9); A0's and A1's MakeSum9 are left out (see the file).
    """
    task = AdditionTask(n_digits)
    clauses = []
    for d in range(n_digits, -1, -1):
        position = task.logit_position_for_answer_digit(d)

        def reads(subtask: str, pair: int, words: str) -> Clause:
            return Clause(name=f"A{d} {subtask}", answer_digit=f"A{d}", subtask=subtask, pair=pair, position=position,
                          attends_to=(f"D{pair}", f"D'{pair}"), claim=f"A{d}'s {words} at P{position} by a head "
                          f"that attends to D{pair} and D'{pair}")

        def absent(subtask: str, words: str) -> Clause:
            return Clause(name=f"A{d} no {subtask}", answer_digit=f"A{d}", subtask=subtask, expect="absent",
                          claim=f"A{d} {words}")

        if d < n_digits:
            clauses.append(reads("BaseAdd", d, f"BaseAdd (pair {d}) is computed"))
        else:
            clauses.append(absent("BaseAdd", f"has no BaseAdd: it is only the carry out of pair {d - 1}"))
        if d >= 1:
            clauses.append(reads("MakeCarry1", d - 1, f"MakeCarry1 of pair {d - 1} is read"))
        else:
            clauses.append(absent("MakeCarry1", "has no carry in"))
        if d >= 2:
            clauses.append(reads("MakeSum9", d - 1, f"MakeSum9 of pair {d - 1} (with MakeCarry1, its tri-state) "
                                                    f"is read"))
            clauses.append(reads("UseSum9", d - 2, f"UseSum9 (a carry out of pair {d - 2} through a sum-9 pair "
                                                   f"{d - 1}) is read"))
        elif n_digits >= d + 2:  # an invariance test needs a UseSum9 above A_d that leaves it unchanged
            clauses.append(absent("UseSum9", "needs no UseSum9"))
    return clauses


def default_clauses(n_digits: int) -> Hypotheses:
    """What `arithlens analyze` tests: the shipped published_1layer.toml, or its algorithm for other digit counts."""
    shipped = read_hypotheses("published_1layer")
    if shipped.n_digits == n_digits:
        return shipped
    return Hypotheses(tuple(published_clauses(n_digits)), f"published_1layer ({n_digits} digits)",
                      shipped.title, n_digits)


# ----- checking against a model ----------------------------------------------


def _digit(value: str | int, n: int, fail: Fail) -> int:
    text = str(value).strip()
    match = re.fullmatch(r"[Aa]?(\d+)", text)
    if match is None:
        fail(f"answer_digit {value!r} is not an answer digit; write \"A3\" (or 3), A0 being the units")
    digit = int(match.group(1))
    if digit > n:
        fail(f"answer_digit A{digit} does not exist: a {n}-digit model's answer digits are A{n} .. A0")
    return digit


def _position(value: int | str, fail: Fail) -> int:
    match = re.fullmatch(r"P?(\d+)", str(value).strip())
    if match is None:
        fail(f"position {value!r} is not a position; write 13 or \"P13\"")
    return int(match.group(1))


def _check_place(position: int, what: str, target: int, digit: int, task: AdditionTask, fail: Fail) -> None:
    if position >= task.seq_len:
        fail(f"{what}: position {position} does not exist (positions run 0..{task.seq_len - 1})")
    if position > target:
        fail(f"{what} comes after P{target}, the position predicting A{digit}; the model is causal, so it cannot "
             f"affect A{digit}: use a position 0..{target}")


def _default_absent_pair(kind: str, digit: int, valid: list[int]) -> int:
    """The lowest pair at or above A_d's that can vary without changing A_d (a carry-out can; a sum cannot)."""
    above = [p for p in valid if p > digit or (p == digit and kind in ("MakeCarry1", "UseSum9"))]
    return min(above) if above else max(valid)


def _pair(clause: Clause, kind: str, digit: int, n: int, fail: Fail) -> int:
    valid = sorted(d - PAIR_OFFSET[kind] for k, d in pair_kinds(n) if k == kind)
    natural = digit - PAIR_OFFSET[kind]
    if not valid:
        fail(f"a {n}-digit model has no {kind} anywhere (it needs {PAIR_OFFSET[kind] + 1} digits): nothing to test")
    if clause.pair is None:
        if natural in valid:
            return natural
        if clause.expect == "computed":
            fail(f"A{digit} has no {kind} (it would be about pair {natural}); claim it absent (expect = \"absent\") "
                 f"or leave it out")
        return _default_absent_pair(kind, digit, valid)
    if clause.pair not in valid:
        fail(f"pair {clause.pair} has no {kind} in a {n}-digit model: {kind} pairs are {valid[0]}..{valid[-1]}")
    if clause.pair != natural and clause.expect == "computed":
        feeds = f"A{clause.pair + PAIR_OFFSET[kind]}"
        mine = f"A{digit}'s {kind} is about pair {natural}" if natural in valid else f"A{digit} has no {kind}"
        other = (f"; for A{digit} it is UseSum9 of pair {clause.pair}" if kind == "MakeCarry1"
                 and clause.pair == digit - 2 else "")
        fail(f"{kind} of pair {clause.pair} feeds {feeds}, not A{digit} ({mine}{other}); only an absent clause "
             f"may name another digit's pair")
    return clause.pair


def _keys(clause: Clause, position: int, task: AdditionTask, fail: Fail) -> tuple[int, ...]:
    names = task.position_names()
    keys = []
    for key in clause.attends_to:
        text = str(key).strip()
        match = re.fullmatch(r"P(\d+)", text)
        if match is not None:
            key_position = int(match.group(1))
        elif text in names:
            key_position = names.index(text)
        else:
            fail(f"attends_to {key!r} is not a position: use a token name ({', '.join(names[:task.question_len])}, "
                 f"A{task.n_digits}..A0) or P<position>")
        if key_position > position:
            fail(f"attends_to {key!r} is P{key_position}, after P{position}: a head can only attend to earlier "
                 f"positions")
        keys.append(key_position)
    return tuple(keys)


def resolve_clause(clause: Clause, index: int, config: ModelConfig, source: str) -> ResolvedClause:
    """Check one clause against a model's shape and work out its questions and nodes (see the module docstring)."""
    label = _label(clause, index)

    def fail(problem: str) -> NoReturn:
        raise ClauseError(f"{source} clause {label}: {problem}")

    _check_types({f.name: getattr(clause, f.name) for f in fields(Clause)}, f"{source} clause {label}")

    n, task = config.n_digits, AdditionTask(config.n_digits)
    if clause.subtask not in SUBTASKS:
        close = difflib.get_close_matches(str(clause.subtask), SUBTASKS, n=1)
        hint = (" (the carry into A_d is MakeCarry1 of pair d-1)" if clause.subtask == "UseCarry1"
                else f" (did you mean {close[0]!r}?)" if close else "")
        fail(f"unknown subtask {clause.subtask!r}; use one of {', '.join(SUBTASKS)}{hint}")
    if clause.expect not in EXPECTS:
        fail(f"expect must be \"computed\" or \"absent\", got {clause.expect!r}")
    if not 0 < clause.min_attention <= 1:
        fail(f"min_attention must lie in (0, 1], got {clause.min_attention}")
    if not 0 < clause.margin < 1:
        fail(f"margin must lie in (0, 1), got {clause.margin}")
    digit = _digit(clause.answer_digit, n, fail)
    kind = clause.subtask
    pair = _pair(clause, kind, digit, n, fail)
    pair_digit = pair + PAIR_OFFSET[kind]
    test = "patch" if pair_digit == digit else "invariance"
    target = task.logit_position_for_answer_digit(digit)
    places = [clause.position is not None, clause.node is not None, bool(clause.nodes)]
    if sum(places) > 1:
        fail("give one of position, node and nodes")
    if clause.attends_to and clause.position is None:
        fail("attends_to picks heads at a position: give position = N with it (not node or nodes)")
    position, keys, sites = None, (), None
    if clause.position is not None:
        position = _position(clause.position, fail)
        _check_place(position, f"position P{position}", target, digit, task, fail)
        if clause.attends_to:
            keys = _keys(clause, position, task, fail)
        else:
            sites = tuple((position, layer, head) for layer in range(config.n_layers)
                          for head in [*range(config.n_heads), None])
    elif clause.node is not None or clause.nodes:
        found = []
        for name in ([clause.node] if clause.node is not None else list(clause.nodes)):
            try:
                node_position, layer, head = parse_node_name(name)
            except ArithlensError as error:
                fail(str(error))
            if layer >= config.n_layers:
                fail(f"node {name}: layer {layer} does not exist (layers: 0..{config.n_layers - 1})")
            if head is not None and head >= config.n_heads:
                fail(f"node {name}: head {head} does not exist (heads per layer: 0..{config.n_heads - 1})")
            _check_place(node_position, f"node {name}", target, digit, task, fail)
            found.append((node_position, layer, head))
        sites = tuple(dict.fromkeys(found))
    elif test == "patch":
        sites = tuple((target, layer, head) for layer in range(config.n_layers)
                      for head in [*range(config.n_heads), None])
    return ResolvedClause(clause=clause, label=label, digit=digit, kind=kind, pair=pair, pair_digit=pair_digit,
                          test=test, target=target, sites=sites, position=position, keys=keys)


def resolve_clauses(clauses: Hypotheses | Sequence[Clause], config: ModelConfig) -> list[ResolvedClause]:
    """Every clause checked against a model's shape; the first problem raises `ClauseError`."""
    hypotheses = clauses if isinstance(clauses, Hypotheses) else Hypotheses(tuple(clauses))
    source = hypotheses.source
    if not hypotheses.clauses:
        raise ClauseError(f"{source}: no clauses to test")
    if hypotheses.n_digits is not None and hypotheses.n_digits != config.n_digits:
        raise ClauseError(f"{source}: written for {hypotheses.n_digits}-digit models (n_digits = "
                          f"{hypotheses.n_digits}), but the model adds {config.n_digits}-digit numbers")
    seen: dict[str, int] = {}
    resolved = []
    for index, clause in enumerate(hypotheses.clauses):
        if not isinstance(clause, Clause):
            raise ClauseError(f"{source} clause #{index + 1}: expected a Clause, got {type(clause).__name__}")
        if clause.name and clause.name in seen:
            raise ClauseError(f"{source} clause {_label(clause, index)}: the name is also clause "
                              f"#{seen[clause.name]}'s; names must differ")
        seen[clause.name] = index + 1
        resolved.append(resolve_clause(clause, index, config, source))
    return resolved
