"""argv -> (command, Hydra overrides) -> launch.

`energy-ood <command> [OVERRIDES...]` runs the Hydra application whose primary config is
`conf/<command>.yaml`; every Hydra flag (`-m`, `--cfg job`, `--hydra-help`, `hydra.run.dir=...`) keeps working,
and `COMMAND --help` prints the command's config groups and config.
This module only rewrites a few shorthands (`--ood a,b`; the positional paths of `report` and `score` into
a quoted `paths=[...]` list) and turns user errors into one-line messages."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Sequence

from energy_cli.config.compose import compose_config, extra_config_dirs
from energy_cli.config.overrides import quote, sets_key
from energy_cli.config.paths import config_dir
from energy_cli.errors import PROG, UserError, fail
from energy_cli.launch import launch, report_errors, run_hydra

COMMANDS: dict[str, str] = {
    "train": "pretrain a classifier with cross-entropy",
    "finetune": "fine-tune it: loss=energy (CE + lambda * energy hinge loss, default) or loss=oe",
    "eval": "OOD detection: scores -> FPR95 / AUROC / AUPR -> results.csv, thresholds.json",
    "report": "gather results.csv files (runs, sweeps) into report.csv / report.md",
    "score": "score image files or folders with a trained model -> scores.csv",
}


# Commands that take positional paths (`energy-ood report PATH...`), and the list key they become.
POSITIONAL: dict[str, str] = {"report": "paths", "score": "paths"}


USAGE = f"""usage: {PROG} <command> [OVERRIDES...]
       {PROG} <command> -m KEY=a,b ...      (a Hydra multirun sweep)
       {PROG} <command> --help | --cfg job | --hydra-help

commands:
""" + "".join(f"  {name:<9} {text}\n" for name, text in COMMANDS.items()) + f"""
examples:
  {PROG} train
  {PROG} finetune m_in=-23 m_out=-5
  {PROG} eval --ood gaussian,uniform score=all
  {PROG} finetune -m m_out=-3,-5
  {PROG} report multirun/eval/<date>_<time>
  {PROG} score my_images/ threshold=7.5

Every run prints the folder it writes to (outputs/<command>/<date>_<time>/ by default).
Configuration keys: {PROG} <command> --cfg job    Documentation: README.md"""


def expand_shorthands(args: Sequence[str]) -> list[str]:
    """`--ood a,b` and `--ood=a,b` -> `ood=[a,b]`; everything else is passed to Hydra unchanged."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--ood" or arg.startswith("--ood="):
            if arg == "--ood":
                if i + 1 >= len(args) or args[i + 1].startswith("-") or "=" in args[i + 1]:
                    raise UserError("--ood needs a comma-separated list of OOD sets, e.g. --ood svhn,lsun")
                value = args[i + 1]
                i += 1
            else:
                value = arg.split("=", 1)[1]
            names = [v.strip() for v in value.split(",") if v.strip()]
            if not names:
                raise UserError("--ood needs a comma-separated list of OOD sets, e.g. --ood svhn,lsun")
            out.append("ood=[" + ",".join(quote(n, mark='"') for n in names) + "]")
        else:
            out.append(arg)
        i += 1
    return out


# Hydra flags followed by a value, so that the value is not taken for a path.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}


_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def collect_paths(command: str, args: Sequence[str]) -> list[str]:
    """For commands with positional paths: the arguments that name files or folders become one list
    override, `paths=['a','b']` (quoted, so any file name works). An argument is a path when it exists
    on disk, or when it has no `=`; everything after `--` is a path."""
    key = POSITIONAL.get(command)
    if key is None:
        return list(args)
    out, paths = [], []
    i, only_paths = 0, False
    while i < len(args):
        arg = args[i]
        if only_paths:
            paths.append(arg)
        elif arg == "--":
            only_paths = True
        elif arg.startswith("-"):
            out.append(arg)
            takes_value = arg in _FLAGS_WITH_VALUE or (arg in ("--info", "-i") and i + 1 < len(args)
                                                       and args[i + 1] in _INFO_TOPICS)
            if takes_value and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        elif os.path.lexists(arg) or ("=" not in arg and not re.fullmatch(r"~[\w.]+", arg)):
            paths.append(arg)
        else:
            out.append(arg)
        i += 1
    if paths:
        if sets_key(out, key):
            raise UserError(f"give the paths either as arguments or as {key}=[...], not both")
        out.append(f"{key}=[" + ",".join(quote(p) for p in paths) + "]")
    return out


HELP_FLAGS = ("--help", "-h")


def config_groups(command: str, extra_dirs: Sequence[os.PathLike] = ()) -> dict[str, list[str]]:
    """The config groups a user picks from (GROUP=OPTION) for `command`, those its conf/<command>.yaml lists
    (Hydra's own `hydra` left out), with their options in conf/ and in the --config-dir folders."""
    from omegaconf import OmegaConf

    listed = OmegaConf.load(config_dir() / f"{command}.yaml").get("defaults", [])
    names = sorted({name for entry in listed if OmegaConf.is_dict(entry) for name in entry} - {"hydra"})
    return {name: sorted({f.stem for root in [config_dir(), *map(Path, extra_dirs)]
                          for f in (Path(root) / name).glob("*.yaml")}) for name in names}


def command_help(command: str, args: Sequence[str]) -> str:
    """`energy-ood COMMAND --help`: what the command does, its config groups and its composed config (with the
    other arguments applied), without starting Hydra's application."""
    from omegaconf import OmegaConf

    args = [a for a in args if a not in HELP_FLAGS]
    cfg = report_errors(command, lambda: compose_config(command, args))
    groups = "".join(f"  {name}: {', '.join(options)}\n"
                     for name, options in config_groups(command, extra_config_dirs(args)).items())
    first = "[PATH...]" if command in POSITIONAL else "[GROUP=OPTION]..."
    return (f"usage: {PROG} {command} {first} [KEY=VALUE]...    {COMMANDS[command]}\n\n"
            + (f"config groups:\n{groups}\n" if groups else "")
            + f"every key's type, default and meaning: docs/configuration.md; Hydra's flags: {PROG} {command} "
              "--hydra-help\n\n"
            + f"config ({PROG} {command} --cfg job prints it alone):\n\n{OmegaConf.to_yaml(cfg)}")


COMPLETION_FLAGS = ("-sc", "--shell-completion")


def completion_request(args: Sequence[str]) -> str | None:
    """The value of `-sc VALUE` (install=bash, query=bash, ...) among the arguments, or None."""
    for i, arg in enumerate(args):
        if arg in COMPLETION_FLAGS:
            request = args[i + 1] if i + 1 < len(args) else ""
            if not re.fullmatch(r"(install|uninstall|query)=(bash|zsh|fish)", request):
                raise UserError(f"-sc {request} is not known; use -sc install=SHELL (or uninstall=SHELL), "
                                "SHELL one of bash, zsh, fish")
            return request
    return None


def shell_completion(command: str | None, request: str) -> None:
    """Shell completion for the whole program. `energy-ood [COMMAND] -sc install=bash` prints Hydra's script,
    which registers `energy-ood` with the shell; on TAB the shell runs `energy-ood -sc query=bash` with the
    line typed so far in COMP_LINE. The word after `energy-ood` completes to a command; later words complete
    to that command's keys, config groups and choices (Hydra's own completion, given the line without the
    command word)."""
    if not request.startswith("query="):
        run_hydra(command or "train", ["-sc", request])
        return
    line = os.environ.get("COMP_LINE", "")
    words = re.match(r"\s*\S*\s*(\S*)(.*)", line, re.S)
    typed, rest = (words.group(1), words.group(2)) if words else ("", "")
    if not rest:   # still typing the command
        sep = "\n" if request == "query=fish" else " "
        print(sep.join(name for name in COMMANDS if name.startswith(typed)))
        return
    if typed not in COMMANDS:
        return
    saved = os.environ.get("COMP_LINE")
    os.environ["COMP_LINE"] = PROG + rest
    try:
        run_hydra(typed, ["-sc", request])
    finally:
        if saved is None:
            os.environ.pop("COMP_LINE", None)
        else:
            os.environ["COMP_LINE"] = saved


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE + "\n")
        raise SystemExit(2)
    if args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if args[0] == "--version":
        from energy_cli import __version__

        print(f"{PROG} {__version__}")
        return
    command, rest = args[0], args[1:]
    try:
        request = completion_request(args)
        if request is not None:
            shell_completion(command if command in COMMANDS else None, request)
            return
        if command not in COMMANDS:
            raise UserError(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)} ({PROG} --help)")
        overrides = collect_paths(command, expand_shorthands(rest))
        if any(flag in overrides for flag in HELP_FLAGS):
            print(command_help(command, overrides), end="")
            return
    except UserError as exc:
        fail(str(exc))
    launch(command, overrides)


if __name__ == "__main__":
    main()
