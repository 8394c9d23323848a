"""Set-up every job shares: what it tells the user about the machine before the work starts."""

import os
import subprocess
import sys
import threading

import pytest
import torch

from segadapt import runtime

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: /proc/stat and CPU affinity")


@pytest.fixture
def unchecked(monkeypatch):
    monkeypatch.setattr(runtime, "_load_checked", False)


@pytest.mark.parametrize(("others", "said"), [(1.9, True), (1.0, True), (0.3, False), (None, False)])
def test_busy_cores_are_named_once_with_how_to_set_threads(unchecked, monkeypatch, capsys, others, said):
    """Other processes on the cores torch's threads need make them wait (the demo ran 6x slower): say so."""
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(runtime, "others_busy", lambda cpus: others)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    runtime.warn_if_busy()
    runtime.warn_if_busy()  # a sweep runs many loops in one process: said once
    err = capsys.readouterr().err
    if said:
        assert err.count("segadapt: note:") == 1 and f"keep {others:.1f} of this process's 2 core(s)" in err
        assert "--threads 1" in err and len(err.strip().splitlines()) == 1
    else:
        assert err == ""


def test_a_busy_process_is_seen_and_this_process_is_not(unchecked):
    """Measured, not assumed: a spinning process on one of our cores counts; our own threads' work does not
    (a test suite or a sweep would otherwise read its own earlier work as someone else's load)."""
    cpu = min(os.sched_getaffinity(0))
    spin = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        assert runtime.others_busy({cpu}, 0.5) > 0.5
    finally:
        spinner.kill()
        spinner.wait()
    cpus = os.sched_getaffinity(0)
    before = runtime.others_busy(cpus, 0.5)
    stop = threading.Event()
    x = torch.randn(384, 384)
    worker = threading.Thread(target=lambda: [x @ x for _ in iter(stop.is_set, True)])
    worker.start()
    try:
        during = runtime.others_busy(cpus, 0.5)
    finally:
        stop.set()
        worker.join()
    assert during < before + 0.6  # a whole core of our own work is not counted
