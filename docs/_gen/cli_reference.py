"""The CLI reference page, walked from the argparse parsers segadapt itself runs (segadapt.cli.build_parser)."""

from __future__ import annotations

import argparse


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _flag_row(action: argparse.Action, keys: dict[str, str]) -> str:
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
    if action.metavar:
        names += f" `{action.metavar}`"
    elif action.nargs not in (0,) and action.option_strings and not isinstance(
            action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
        names += f" `{action.dest.upper()}`"
    help_text = action.help or ""
    if action.choices:
        help_text += f" (one of {', '.join(map(str, action.choices))})"
    if action.nargs in ("+", "*"):
        help_text += " (several values)"
    if isinstance(action, argparse._AppendAction):
        help_text += " (repeatable)"
    default = action.default
    shown = "" if default in (None, [], False, argparse.SUPPRESS) else f"`{default}`"
    key = keys.get(action.dest)
    where = f"[`{key}`](config.md#{key.replace('.', '')})" if key else ""
    return f"| {names} | {_cell(help_text)} | {shown} | {where} |"


def _command(parser: argparse.ArgumentParser, path: list[str], level: int) -> list[str]:
    name = " ".join(path)
    out = [f"{'#' * level} `{name}`", ""]
    keys = {dest: f.key for dest, f in parser._defaults.get("config_flags", {}).items()}
    if parser.description:
        out += [parser.description, ""]
    usage = parser.format_usage().replace("usage: ", "", 1).strip()
    out += ["```text", usage, "```", ""]
    subcommands = None
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)
                   and not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS]
        if any(isinstance(a, argparse._SubParsersAction) for a in group._group_actions):
            subcommands = next(a for a in group._group_actions if isinstance(a, argparse._SubParsersAction))
        if not actions:
            continue
        title = group.title or "arguments"
        out += [f"*{title}*", "", "| flag | what it does | default | config key |", "| --- | --- | --- | --- |"]
        out += [_flag_row(a, keys) for a in actions]
        out.append("")
    if subcommands is not None:
        helps = {c.dest: c.help for c in subcommands._choices_actions}
        for sub_name, sub in subcommands.choices.items():
            if helps.get(sub_name):
                sub.description = sub.description or helps[sub_name]
            out += _command(sub, [*path, sub_name], level + 1)
    return out


def page() -> str:
    from segadapt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = ["# Command line", "",
             "Generated at build time from the parsers `segadapt` runs (`segadapt.cli.build_parser`), so every "
             "command and flag here is one the installed version accepts. `segadapt COMMAND --help` prints the "
             "same.", "",
             "Every command takes its settings in one order, later ones winning: `--preset` (or the settings a "
             "model or run was saved with) < `--config FILE.toml` < the command's flags < `--set table.key=value`. "
             "A flag is a shortcut for one [configuration key](config.md) (last column).", "",
             "| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{n}`](#segadapt-{n}) | {_cell(helps.get(n, ''))} |" for n in sub.choices]
    lines += ["", "## `segadapt`", "", "```text", parser.format_usage().replace("usage: ", "", 1).strip(), "```", "",
              "| flag | what it does |", "| --- | --- |"]
    lines += [f"| {', '.join(f'`{o}`' for o in a.option_strings)} | {_cell(a.help)} |"
              for a in parser._actions if a.option_strings]
    lines.append("")
    for name, p in sub.choices.items():
        p.description = p.description or helps.get(name)
        lines += _command(p, ["segadapt", name], 2)
    return "\n".join(lines) + "\n"
