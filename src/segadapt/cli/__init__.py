"""segadapt's command line. The root only registers the command groups (one module each, its parser builder
beside its handler) and turns errors into one line; the work lives in the library modules they call."""

from __future__ import annotations

import argparse
import os
import sys

from segadapt import __version__, chatter
from segadapt.cli import adapt, config, doctor, evaluate, experiment, export, predict, shift, train, viz
from segadapt.cli.common import discard_partial_outputs, forget_outputs, resolve_config
from segadapt.errors import Interrupted, SegadaptError

COMMANDS = (train, evaluate, adapt, experiment, shift, viz, doctor, predict, export, config)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chatter.show(args.debug)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 reports; errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    try:
        code = args.func(args)
        forget_outputs()
        return code
    except Interrupted as e:  # Ctrl-C, turned into a resume point or a clean stop: the shell's SIGINT code
        discard_partial_outputs()
        if args.debug:
            raise
        _report(f"segadapt: error: {_one_line(e)}")
        return 130
    except SegadaptError as e:
        discard_partial_outputs()
        if args.debug:
            raise
        _report(f"segadapt: error: {_one_line(e)}")
        return 2
    except OSError as e:
        discard_partial_outputs()
        if args.debug:
            raise
        _report(f"segadapt: error: {_os_error(e)}")
        return 2
    except ValueError as e:  # os functions refuse a path with a NUL byte that no check caught
        if "null byte" not in str(e):
            raise
        discard_partial_outputs()
        if args.debug:
            raise
        _report("segadapt: error: a path given contains a NUL byte; give a plain path")
        return 2
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
        if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
            raise
        discard_partial_outputs()
        if args.debug:
            raise
        _report("segadapt: error: out of memory; lower train.batch_size, data.crop_size or model.width "
                f"({_one_line(e)[:160]})")
        return 2
    except KeyboardInterrupt:
        discard_partial_outputs()
        _report("segadapt: interrupted")
        return 130
    finally:
        from segadapt.run import release_all

        release_all()


__all__ = ["build_parser", "main", "resolve_config"]


if __name__ == "__main__":
    raise SystemExit(main())
