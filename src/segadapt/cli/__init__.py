"""segadapt's command line. The root only registers the command groups (one module each, its parser builder
beside its handler) and turns errors into one line; the work lives in the library modules they call."""

from __future__ import annotations

import argparse
import os
import sys

from segadapt import chatter
from segadapt.cli import adapt, change, config, doctor, evaluate, experiment, export, peer, predict, shift, train, viz
from segadapt.cli.common import discard_partial_outputs, forget_outputs, resolve_config
from segadapt.errors import Interrupted, SegadaptError
from segadapt.version import __version__

COMMANDS = (train, evaluate, adapt, peer, experiment, shift, viz, doctor, predict, change, export, config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segadapt", description="Adapt a trained segmentation network to a new image domain without labels, "
        "by regressing feature maps.")
    parser.add_argument("--version", action="version", version=f"segadapt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks, and what libraries print or "
                        "warn (held back otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(e: BaseException) -> str:
    """The message alone: a DataLoader worker re-raises an error with its traceback folded into the text."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
    return lines[-1][len(prefix):] if lines[-1].startswith(prefix) else " ".join(lines)


def _os_error(e: OSError) -> str:
    """A path that cannot be read or written, named, with the likely fix."""
    path = e.filename2 if e.filename2 is not None else e.filename
    hint = {IsADirectoryError: "a folder is there; give a file path",
            NotADirectoryError: "a file is where a folder is needed; give a folder",
            FileExistsError: "a file is where a folder is needed; give a folder"}.get(type(e), "check the path")
    where = f"{path}: " if path is not None else ""
    return f"{where}{e.strerror or e}; {hint}"


def _report(message: str) -> None:
    """One line on stderr, after closing any progress bar a failed loop left open (else the line would
    start after the bar's text)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    print(message, file=sys.stderr)


def _failure(e: BaseException) -> tuple[str, int]:
    """The one line and exit code for an error that ended a command. Anything unforeseen (an input no check
    knew about, or a bug) is still one line, exit 1, after the same clean-up: a traceback helps only with
    --debug, and a half-written output folder helps nobody."""
    if isinstance(e, Interrupted):  # Ctrl-C, turned into a resume point or a clean stop: the shell's SIGINT code
        return f"segadapt: error: {_one_line(e)}", 130
    if isinstance(e, KeyboardInterrupt):
        return "segadapt: interrupted", 130
    if isinstance(e, SegadaptError):
        return f"segadapt: error: {_one_line(e)}", 2
    if isinstance(e, OSError):
        return f"segadapt: error: {_os_error(e)}", 2
    if isinstance(e, ValueError) and "null byte" in str(e):  # os functions refuse a NUL no check caught
        return "segadapt: error: a path given contains a NUL byte; give a plain path", 2
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "memory" in str(e).lower()):
        # torch reports a failed allocation as a RuntimeError
        return ("segadapt: error: out of memory; lower train.batch_size, data.crop_size or model.width "
                f"({_one_line(e)[:160]})"), 2
    return (f"segadapt: error: unexpected {type(e).__name__}: {_one_line(e)[:200]} (an input segadapt does not "
            "check, or a bug; rerun with --debug for the traceback and report it)"), 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chatter.show(args.debug)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 reports; errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    try:
        code = args.func(args)
        forget_outputs()
        return code
    except (Exception, KeyboardInterrupt) as e:  # SystemExit passes: argparse and --help exit on their own
        discard_partial_outputs()
        if args.debug and not isinstance(e, KeyboardInterrupt):
            raise
        message, code = _failure(e)
        _report(message)
        return code
    finally:
        from segadapt.run_dir import unlock_all

        unlock_all()


__all__ = ["build_parser", "main", "resolve_config"]


if __name__ == "__main__":
    raise SystemExit(main())
