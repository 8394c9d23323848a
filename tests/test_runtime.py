"""Set-up every job shares: what it tells the user about the machine before the work starts."""

import pytest

from segadapt import runtime


@pytest.fixture
def fresh_check(monkeypatch):
    monkeypatch.setattr(runtime, "_load_checked", False)
    monkeypatch.setattr(runtime, "cores", lambda: 2)


@pytest.mark.parametrize(("load", "said"), [(3.9, True), (2.0, True), (1.2, False), (0.05, False)])
def test_a_busy_machine_is_named_once_with_how_to_set_threads(fresh_check, monkeypatch, capsys, load, said):
    """Other processes on every core make torch's threads wait on them (the demo ran 6x slower): say so."""
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    runtime.setup(0)
    runtime.setup(1)  # a sweep sets up many runs in one process: its own load must not be read as others'
    err = capsys.readouterr().err
    if said:
        assert err.count("segadapt: note:") == 1 and f"load average is {load:.1f} on 2 core" in err
        assert "--threads" in err and len(err.strip().splitlines()) == 1
    else:
        assert err == ""
