"""The error classes' contract with the CLI's handlers."""

from segadapt.errors import Interrupted, SegadaptError


def test_interrupted_is_still_a_segadapt_error():
    """Until a handler maps it to 130, Ctrl-C keeps today's behaviour: one line, checkpointed run kept."""
    assert issubclass(Interrupted, SegadaptError) and "130" in (Interrupted.__doc__ or "")
