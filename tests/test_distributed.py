"""Multi-process training: sharded sampling, and 2 CPU processes under torchrun against 1 process."""

import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.cli import main
from segadapt.data.sampler import EpochSampler, batches
from segadapt.errors import ConfigError
from segadapt.run import rank_batch_size
from segadapt.runtime import autocast_dtype

# augmentation off (scale 1, no flip, crop = image), so both runs see identical pixels; dropout masks are the
# only randomness that differs between 1 and 2 processes
TINY = [
    "--preset", "synthetic", "--set", "model.width=0.0625", "--iterations", "20", "--threads", "1",
    "--set", "data.synthetic_train=32", "--set", "data.synthetic_val=8", "--set", "data.synthetic_size=[32,48]",
    "--set", "data.crop_size=[32,48]", "--set", "data.scale_min=1.0", "--set", "data.scale_max=1.0",
    "--set", "data.hflip=false", "--set", "train.log_every=1", "--set", "train.checkpoint_every=10",
]
# the regression: output-level terms pick paired_pseudo's confident pixels per class over each process's share of
# the batch, so two processes do not match one exactly (as BatchNorm statistics would not)
ADAPT = ["--filter", "ripple", "--objective", "features",
         "--layers", "pool2", "--iterations", "6", "--threads", "1", "--set", "train.lr=0.01",
         "--set", "train.log_every=1"]


def test_shards_are_disjoint_and_deal_out_the_global_order():
    n, world, steps, per_rank = 12, 3, 7, 2
    whole = list(itertools.islice(iter(EpochSampler(n, seed=5)), steps * per_rank * world))
    shards = [list(itertools.islice(iter(EpochSampler(n, seed=5, rank=r, world=world)), steps * per_rank))
              for r in range(world)]
    for r, shard in enumerate(shards):
        assert shard == whole[r::world]
    # one epoch: the shards are disjoint and together cover every index once
    epoch = [set(shard[: n // world]) for shard in shards]
    assert set.union(*epoch) == set(range(n)) and sum(map(len, epoch)) == n
    for s in range(steps):  # each step, the ranks' batches together are exactly one process's batch
        together = sorted(i for shard in shards for i in shard[s * per_rank:(s + 1) * per_rank])
        assert together == sorted(whole[s * per_rank * world:(s + 1) * per_rank * world])
    # resuming at a global position continues each shard exactly
    start = 3 * per_rank * world
    resumed = list(itertools.islice(iter(EpochSampler(n, seed=5, start=start, rank=1, world=world)), 2 * per_rank))
    assert resumed == shards[1][3 * per_rank:5 * per_rank]
    with pytest.raises(ValueError, match="multiple of world"):
        EpochSampler(n, seed=5, start=4, rank=0, world=3)


def test_batches_follow_the_loader_grouping():
    sampler = EpochSampler(5, seed=0)
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2, sampler=sampler, drop_last=True)
    for got, ids in itertools.islice(zip(loader, batches(sampler, 2)), 6):
        assert got.tolist() == ids


def test_global_batch_must_split_evenly():
    assert rank_batch_size(8, 2) == 4 and rank_batch_size(8, 1) == 8
    with pytest.raises(ConfigError, match="split evenly over 3 processes"):
        rank_batch_size(8, 3)


def test_single_process_has_no_process_group():
    assert os.environ.get("WORLD_SIZE") is None
    assert not distributed.init() and not distributed.active()
    assert distributed.is_main() and distributed.world_size() == 1 and distributed.rank_seed(7) == 7
    t = torch.ones(2)
    assert distributed.all_reduce(t) is t and t.tolist() == [1.0, 1.0]


def test_autocast_stays_float32_on_cpu():
    assert autocast_dtype(torch.device("cpu")) is None


def _torchrun(args: list[str], cwd) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # containers whose hostname does not resolve to a local address
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "segadapt", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"


def _losses(run) -> list[float]:
    lines = (run / "log.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


@pytest.mark.slow
def test_two_processes_train_and_adapt_like_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) against 1 process with the same global batch."""
    two, one = tmp_path / "two", tmp_path / "one"
    _torchrun(["train", *TINY, "--out", str(two)], tmp_path)
    assert main(["train", *TINY, "--out", str(one)]) == 0

    # exactly one set of outputs, written once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing made in cwd either
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_0000010.safetensors",
                                                                       "step_0000020.safetensors"]
    assert [int(line.split(",")[0]) for line in (two / "log.csv").read_text().splitlines()[1:]] == list(range(1, 21))

    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert m2["environment"]["processes"] == 2 and m1["environment"]["processes"] == 1
    assert sum(map(sum, m2["confusion"])) == sum(map(sum, m1["confusion"]))  # the whole val set was scored
    # same data per step; only dropout masks differ, so the runs agree closely but not bit for bit
    assert abs(m2["val"]["miou"] - m1["val"]["miou"]) < 0.03
    assert abs(m2["val"]["pixel_acc"] - m1["val"]["pixel_acc"]) < 0.05
    l2, l1 = _losses(two), _losses(one)
    assert abs(l2[0] - l1[0]) < 5e-3 and max(abs(a - b) for a, b in zip(l2, l1)) < 0.05

    # a 2-process run resumed from its step-10 checkpoint ends with bit-identical weights
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    (resumed / "checkpoints" / "step_0000020.safetensors").unlink()
    (resumed / "model.safetensors").unlink()
    _torchrun(["train", "--resume", str(resumed)], tmp_path)
    wa, _ = ckpt.load_model_file(two)
    wb, _ = ckpt.load_model_file(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # another checkpoint schedule (7, 14) gives the same weights, also resumed from step 14, which was no
    # checkpoint of the first run (as after Ctrl-C or a time budget): rank 1's RNG follows seed and step alone
    seven = tmp_path / "seven"
    _torchrun(["train", *TINY, "--set", "train.checkpoint_every=7", "--out", str(seven)], tmp_path)
    (seven / "checkpoints" / "step_0000020.safetensors").unlink()
    (seven / "model.safetensors").unlink()
    _torchrun(["train", "--resume", str(seven)], tmp_path)
    wc, _ = ckpt.load_model_file(seven)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)

    # adaptation runs without dropout: the two runs must agree to float rounding
    _torchrun(["adapt", "--h1", str(one), *ADAPT, "--out", str(tmp_path / "a2")], tmp_path)
    assert main(["adapt", "--h1", str(one), *ADAPT, "--out", str(tmp_path / "a1")]) == 0
    assert _losses(tmp_path / "a2") == pytest.approx(_losses(tmp_path / "a1"), rel=1e-4)
    r2, r1 = (json.loads((tmp_path / d / "adapt.json").read_text()) for d in ("a2", "a1"))
    assert r2["final_layer_loss"]["pool2"] == pytest.approx(r1["final_layer_loss"]["pool2"], rel=1e-4)
