"""Write docs/reference/cli.md from lightseg's argparse parser: every subcommand and every option.

    python tools/cli_reference.py [--check]

The page is built from the parser's actions (option names, metavar, choices, default, help), not from
argparse's formatted help, so that it does not depend on the terminal width or the Python version.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docgen import GENERATED, cell, main  # noqa: E402

from lightseg.cli import build_parser  # noqa: E402

PATH = "docs/reference/cli.md"
TOOL = "tools/cli_reference.py"


def _subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]


def _help(action, prog: str) -> str:
    text = action.help or ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if isinstance(params.get("choices"), (list, tuple)):
        params["choices"] = ", ".join(map(str, params["choices"]))
    return text % params


def _value(action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices:
        return "{" + ", ".join(map(str, action.choices)) + "}"
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if isinstance(metavar, tuple):
        return " ".join(metavar)
    if action.nargs in ("+", "*"):
        return f"{metavar} [{metavar} ...]"
    if action.nargs == "?":
        return f"[{metavar}]"
    if isinstance(action.nargs, int) and action.nargs > 1:
        return " ".join([metavar] * action.nargs)
    return metavar


def _default(action) -> str:
    d = action.default
    if action.nargs == 0 or d is None or d is argparse.SUPPRESS or d == []:
        return ""
    return " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)


def _rows(parser, prog):
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{o}`" for o in a.option_strings) if a.option_strings else f"`{_value(a)}` (positional)"
        value = _value(a) if a.option_strings else ""
        rows.append(f"| {name} | {cell(f'`{value}`' if value else '')} | {cell(_default(a))} | {cell(_help(a, prog))} |")
    return rows


def _usage(name, sub) -> str:
    positional = []
    for a in sub._actions:
        if not a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            positional.append(f"[{a.metavar or a.dest}]" if a.nargs == "?" else (a.metavar or a.dest))
    return " ".join(["lightseg", name, "[options]", *positional])


def render() -> str:
    parser = build_parser()
    subs = _subcommands(parser)
    out = [GENERATED.format(tool=TOOL), "", "# Command line reference", "",
           f"`lightseg COMMAND [options]` (or `python -m lightseg`). {parser.description} A user error (a bad path, "
           "key or value) prints one line naming it and exits with status 2; `--debug` shows the traceback instead. "
           "`lightseg COMMAND --help` prints the same options.", "",
           "| command | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#lightseg-{name}) | {cell(help_)} |" for name, _, help_ in subs]
    out += ["", "Options of `lightseg` itself (before the command):", "",
            "| option | value | default | meaning |", "|---|---|---|---|", *_rows(parser, "lightseg")]
    for name, sub, help_ in subs:
        out += ["", f"## lightseg {name}", "", f"{help_[0].upper()}{help_[1:]}." if help_ else "", "",
                "```", _usage(name, sub), "```", "",
                "| option | value | default | meaning |", "|---|---|---|---|", *_rows(sub, f"lightseg {name}")]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(render, PATH, TOOL))
