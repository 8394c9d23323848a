import csv
import itertools
import json

import torch

from segadapt import checkpoint as ckpt
from segadapt.config import load_toml
from segadapt.data.sampler import EpochSampler
from segadapt.models.loading import load_model
from segadapt.run import poly_schedule
from segadapt.train import train
from tiny import tiny_train_config


def tiny_config(iterations: int = 6):
    return tiny_train_config(iterations, width=0.125, checkpoint_every=3)


def test_poly_schedule():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}])
    schedule = poly_schedule(opt, 100, 0.9)
    rates = []
    for _ in range(101):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[0] == 0.1 and rates[50] == 0.1 * (1.0 - 50 / 100) ** 0.9 and rates[100] == 0.0
    assert opt.param_groups[1]["initial_lr"] == 1.0  # each group's own base rate


def test_poly_schedule_resumes_from_the_optimizers_state():
    """A resumed schedule reads its base rates from the optimizer state a resume point holds, and takes the
    rate at the resumed step with the run's (possibly extended) length; older points kept them as base_lr."""
    def optimizer() -> torch.optim.SGD:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    first = optimizer()
    schedule = poly_schedule(first, 10, 0.9)
    for _ in range(4):
        first.step()
        schedule.step()
    resumed = optimizer()
    resumed.load_state_dict(first.state_dict())
    resumed.param_groups[0]["lr"] = 123.0  # whatever the state held, the schedule sets the step's rate
    assert poly_schedule(resumed, 10, 0.9, start=4).get_last_lr() == schedule.get_last_lr()
    assert poly_schedule(resumed, 20, 0.9, start=4).get_last_lr() == [0.1 * (1.0 - 4 / 20) ** 0.9]
    old = optimizer()
    old.param_groups[0].update(base_lr=0.1, lr=0.05)
    assert poly_schedule(old, 10, 0.9, start=4).get_last_lr() == schedule.get_last_lr()


def test_epoch_sampler_resumes_mid_epoch():
    full = list(itertools.islice(iter(EpochSampler(10, seed=3)), 25))
    assert sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]
    assert list(itertools.islice(iter(EpochSampler(10, seed=3, start=13)), 12)) == full[13:25]


def test_run_directory_contents(tmp_path):
    m = train(tiny_config(), tmp_path)
    assert {"config.toml", "log.csv", "metrics.json", "model.safetensors", "model.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 6 and 0 <= metrics["val"]["miou"] <= 1
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    model, meta = load_model(tmp_path)
    assert meta["class_names"][0] == "sky" and meta["step"] == 6
    assert model(torch.zeros(1, 3, 32, 48)).shape == (1, 7, 32, 48)
    assert m["val"] == metrics["val"]


def test_auto_layout_is_recorded_and_trains_as_the_layout_it_picked(tmp_path, capsys):
    """channels_last = "auto" times both layouts, writes its pick into the run's config, and the timing
    leaves nothing behind: the run equals one given that layout from the start."""
    cfg = tiny_config()
    cfg.train.channels_last = "auto"
    train(cfg, tmp_path / "auto")
    assert "memory layout:" in capsys.readouterr().out
    picked = load_toml(tmp_path / "auto" / "config.toml").train.channels_last
    assert isinstance(picked, bool)
    fixed = tiny_config()
    fixed.train.channels_last = picked
    train(fixed, tmp_path / "fixed")
    wa, _ = ckpt.load_model_file(tmp_path / "auto")
    wb, _ = ckpt.load_model_file(tmp_path / "fixed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_ends_with_identical_weights(tmp_path):
    """A run stopped after step 3 and resumed must finish exactly like an uninterrupted one."""
    train(tiny_config(), tmp_path / "a")
    b = tmp_path / "b"
    train(tiny_config(), b)
    # make b look like a run killed right after its step-3 checkpoint
    ckpt.checkpoint_path(b, 6).unlink()
    (b / "model.safetensors").unlink()
    log = (b / "log.csv").read_text().splitlines()
    log[3] = ",".join(v if k != "elapsed_s" else "100.0" for k, v in zip(log[0].split(","), log[3].split(",")))
    (b / "log.csv").write_text("\n".join(log) + "\n")  # step 3 logged 100 s into the run
    train(tiny_config(), b, resume=True)
    wa, _ = ckpt.load_model_file(tmp_path / "a")
    wb, _ = ckpt.load_model_file(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = list(csv.DictReader((b / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # no duplicated steps after resume
    assert all(float(r["elapsed_s"]) >= 100 for r in rows[3:])  # the clock goes on from where the log stopped


def test_training_reduces_loss(tmp_path):
    cfg = tiny_config(iterations=40)
    cfg.train.checkpoint_every = 0
    train(cfg, tmp_path)
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "log.csv").open())]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_fine_tuning_a_frozen_model_trains_it(tmp_path):
    """B2 fine-tunes H1 after the regression froze it as a teacher; that must not break or skip training."""
    cfg = tiny_config(iterations=2)
    cfg.train.checkpoint_every = 0
    train(cfg, tmp_path / "h1")
    h1, _ = load_model(tmp_path / "h1")
    h1.requires_grad_(False)
    before = {k: v.clone() for k, v in h1.state_dict().items()}
    train(cfg, tmp_path / "b2", model=h1)
    assert not torch.equal(before["conv1.0.weight"], h1.state_dict()["conv1.0.weight"])


def test_a_run_stopped_by_its_time_budget_resumes_exactly(tmp_path):
    """The last checkpoint is written after the final evaluation, which must not move the RNG it saves."""
    train(tiny_config(), tmp_path / "a")
    short = tiny_config()
    short.train.time_budget_s = 1e-6  # stops after step 1, evaluates, saves step 1
    train(short, tmp_path / "b")
    assert ckpt.latest_checkpoint(tmp_path / "b").name == "step_0000001.safetensors"
    train(tiny_config(), tmp_path / "b", resume=True)
    wa, _ = ckpt.load_model_file(tmp_path / "a")
    wb, _ = ckpt.load_model_file(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
