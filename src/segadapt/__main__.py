"""`python -m segadapt ...` (and so `torchrun -m segadapt ...`, which needs a module) runs the CLI."""

from segadapt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
