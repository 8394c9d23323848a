"""`python -m segadapt.cli ...` runs the CLI, as `python -m segadapt` does."""

from segadapt.cli import main

raise SystemExit(main())
