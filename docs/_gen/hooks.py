"""MkDocs hook: the reference and results pages are generated from the code and docs/results at every build,
so none of them is a committed copy that could go stale.

- reference/cli.md     every command and flag, from segadapt.cli.build_parser()
- reference/config.md  every config key (type, default, allowed values, the comment in config.py), and what each
                       preset changes, from segadapt.config
- results/<name>.md    one page per benchmark in docs/results: the notes in docs/_gen/results_notes.py, the
                       machine, the table (the benchmark's own .md when it wrote one, else its JSON), the figures
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# the checkout being documented, ahead of any installed copy of segadapt
for p in (str(ROOT / "src"), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import cli_reference  # noqa: E402
import config_reference  # noqa: E402
import results_pages  # noqa: E402
from mkdocs.structure.files import File, Files  # noqa: E402


def on_config(config):
    """Put one nav entry per benchmark page under Results (the pages themselves are made in on_files)."""
    for section in config["nav"] or ():
        if isinstance(section, dict) and "Results" in section:
            entries = section["Results"]
            for name, title in results_pages.titles(ROOT / "docs" / "results").items():
                entries.append({title: f"results/{name}.md"})
    return config


def on_files(files: Files, config) -> Files:
    generated = {"reference/cli.md": cli_reference.page(), "reference/config.md": config_reference.page()}
    generated.update({f"results/{name}.md": text
                      for name, text in results_pages.pages(ROOT / "docs" / "results").items()})
    for uri, text in generated.items():
        old = files.get_file_from_path(uri)
        if old is not None:  # a benchmark's own results/<name>.md: its table is folded into the generated page
            files.remove(old)
        files.append(File.generated(config, uri, content=text))
    return files
