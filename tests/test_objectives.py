"""adapt.objective's terms, their weighting, and what each trains: gradients, optima, masks, resume, config."""

import copy
import csv
import json
import math

import pytest
import torch
from torch import nn

from segadapt import checkpoint as ckpt
from segadapt.adapt import adapt, trainable_parameters, trains_head
from segadapt.config import AdaptConfig, RunConfig, dumps_toml, from_dict, load_toml, merge, parse_override
from segadapt.errors import ConfigError
from segadapt.models import VGGDeepLab
from segadapt.models.contract import conform
from segadapt.objectives import TERMS, Objective, Outputs, build_objective
from segadapt.objectives.features_std import FeaturesStd
from segadapt.objectives.term import as_plain, model_outputs
from segadapt.objectives.weighting import BETA, Fixed, Normalised, Uncertainty
from segadapt.selection import SIGNALS, agreement, better, label_agreement
from test_adapt import make_pairs, tiny_cfg

META = {"arch": "vgg16_deeplab", "width": 0.125, "num_classes": 7}
HEAD = ("fc6", "fc7", "classifier")  # VGGDeepLab above pool5 (and conv4/conv5 above pool3)
PAIRED = sorted(t for t in TERMS if not TERMS[t].needs_labelled)  # the terms on (X1, X2) pairs; d2_labels below


def _vgg() -> VGGDeepLab:
    torch.manual_seed(0)
    return VGGDeepLab(7, width=0.125).eval()


def _objective(terms: dict[str, float], taps: dict[str, float], **settings) -> Objective:
    return build_objective(AdaptConfig(objective=terms, **settings), taps)


def _outputs(teacher: nn.Module, student: nn.Module, objective: Objective, taps: list[str], x1: torch.Tensor,
             x2: torch.Tensor, valid: torch.Tensor | None = None) -> Outputs:
    """One batch as adapt() hands it to the terms (the teacher in inference mode)."""
    with torch.inference_mode():
        maps, logits = model_outputs(teacher, conform(teacher).features, x1, taps, objective.needs_maps,
                                     objective.needs_logits)
    pred, pred_logits = model_outputs(student, conform(student).features, x2, taps, objective.needs_maps,
                                      objective.needs_logits)
    return Outputs(maps, pred, as_plain(logits), pred_logits, valid)


def _calibrated(objective: Objective, teacher: nn.Module, x: torch.Tensor, taps: list[str]) -> Objective:
    with torch.inference_mode():
        objective.calibrate([conform(teacher).features(x, taps)])
    return objective


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("term", PAIRED)
def test_each_term_reaches_exactly_the_parameters_it_should(term, head):
    """Below the deepest tap: trained; above it (conv4.., the head): only with train_head and an output term.
    Every trainable parameter gets a gradient, every other none."""
    teacher = _vgg()
    student = copy.deepcopy(teacher)
    objective = _objective({term: 1.0}, {"pool3": 1.0}, train_head=head)
    x1 = torch.rand(2, 3, 32, 48)
    _calibrated(objective, teacher, x1, ["pool3"])
    trainable = trainable_parameters(conform(student), ["pool3"], trains_head(AdaptConfig(train_head=head),
                                                                                objective))
    ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in ids)
    loss, _ = objective(_outputs(teacher, student, objective, ["pool3"], x1, x1 * 0.5))
    loss.backward()
    names = {name: p for name, p in student.named_parameters()}
    reached = {name for name, p in names.items() if p.grad is not None}
    below = {name for name in names if name.startswith(("conv1", "conv2", "conv3"))}
    head_trains = head and TERMS[term].needs_logits
    assert reached == (set(names) if head_trains else below), term
    assert names["conv1.0.weight"].grad.abs().sum() > 0
    if head_trains:
        assert names["classifier.weight"].grad.abs().sum() > 0


def test_an_output_term_on_a_transformer_trains_the_encoder_below_the_tap_and_keeps_the_decoder():
    """CMA's setting on a tiny SegFormer: output_kl with the decode head frozen reaches the encoder only."""
    pytest.importorskip("transformers")
    from segadapt.models.hf import HFSegmentation
    from tiny_hf import SEGFORMER, hf_net

    torch.manual_seed(0)
    teacher = HFSegmentation(hf_net(SEGFORMER)).eval()
    student = copy.deepcopy(teacher)
    objective = _objective({"output_kl": 1.0}, {"stage4": 1.0})
    trainable = trainable_parameters(student, ["stage4"], trains_head(AdaptConfig(train_head=False), objective))
    ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in ids)
    x = torch.rand(2, 3, 64, 64)
    loss, _ = objective(_outputs(teacher, student, objective, ["stage4"], x, x.flip(-1)))
    loss.backward()
    reached = {n for n, p in student.named_parameters() if p.grad is not None}
    assert reached and all(n.startswith("net.segformer.") for n in reached)
    assert not any(n.startswith("net.decode_head") for n in reached)


def test_kl_and_agreement_are_at_their_optimum_when_h2_is_h1_on_identical_inputs():
    teacher = _vgg()
    x = torch.rand(2, 3, 32, 48)
    objective = _objective({"output_kl": 1.0, "paired_pseudo": 1.0}, {"pool5": 1.0}, temperature=2.0)
    same = _outputs(teacher, copy.deepcopy(teacher), objective, ["pool5"], x, x)
    losses = objective.losses(same)
    assert losses["output_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert label_agreement(same.student_logits, same.teacher_logits) == 1.0
    # the cross-entropy's minimum is a certain H2 that predicts H1's labels: reached by sharpening H1 itself
    sharp = Outputs({}, {}, same.teacher_logits, same.teacher_logits * 1e4)
    assert objective.losses(sharp)["paired_pseudo"].item() == pytest.approx(0.0, abs=1e-4)
    other = Outputs({}, {}, same.teacher_logits, same.teacher_logits.roll(1, dims=1) * 1e4)  # every label moved
    moved = objective.losses(other)
    assert moved["output_kl"] > 0.01 and moved["paired_pseudo"] > 1
    assert label_agreement(other.student_logits, other.teacher_logits) == 0.0


def test_output_kl_is_the_pixel_wise_kl_at_temperature_scaled_by_t_squared():
    t1, t2 = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    objective = _objective({"output_kl": 1.0}, {"pool5": 1.0}, temperature=3.0)
    got = objective.losses(Outputs({}, {}, t1, t2))["output_kl"]
    p, q = (t1 / 3).softmax(1), (t2 / 3).softmax(1)
    assert got.item() == pytest.approx(((p * (p / q).log()).sum(1).mean() * 9).item(), rel=1e-5)


def test_label_agreement_is_the_miou_of_two_label_maps():
    # teacher labels 0 0 1 1, student 0 1 1 1: IoU(0) = 1/2, IoU(1) = 2/3
    t = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 1]]), 2).permute(0, 2, 1).reshape(1, 2, 1, 4).float()
    s = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 1]]), 2).permute(0, 2, 1).reshape(1, 2, 1, 4).float()
    assert label_agreement(s, t) == pytest.approx((1 / 2 + 2 / 3) / 2)
    valid = torch.tensor([1.0, 0.0, 1.0, 1.0]).reshape(1, 1, 1, 4)  # the disagreeing pixel has no source
    assert label_agreement(s, t, valid) == 1.0


@pytest.mark.parametrize("term", PAIRED)
def test_the_validity_mask_removes_invalid_pixels_from_every_term(term):
    """Changing what lies where X2 has no source (both models' outputs there) does not change any term."""
    teacher = _vgg()
    x = torch.rand(2, 3, 32, 48)
    valid = torch.ones(2, 1, 32, 48)
    valid[:, :, :, 24:] = 0  # the right half has no source
    objective = _calibrated(_objective({term: 1.0}, {"pool2": 1.0}), teacher, x, ["pool2"])
    out = _outputs(teacher, copy.deepcopy(teacher), objective, ["pool2"], x, x * 0.7, valid)
    before = objective.fixed(out).item()

    def scramble(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach().clone()
        t[..., t.shape[-1] // 2:] = torch.randn_like(t[..., t.shape[-1] // 2:]) * 100
        return t

    changed = Outputs({k: scramble(v) for k, v in out.teacher_maps.items()},
                      {k: scramble(v) for k, v in out.student_maps.items()},
                      scramble(out.teacher_logits), scramble(out.student_logits), valid)
    assert objective.fixed(changed).item() == pytest.approx(before, rel=1e-6)
    assert before != pytest.approx(objective.fixed(Outputs(changed.teacher_maps, changed.student_maps,
                                                           changed.teacher_logits, changed.student_logits)).item())


def test_features_std_divides_each_channel_by_h1s_std_on_d1():
    maps = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 10.0, 0.0]).reshape(1, 3, 1, 1)  # channel 2 never varies
    term = FeaturesStd({"t": 1.0})
    term.calibrate(iter([{"t": maps[:2]}, {"t": maps[2:]}]))
    std = maps.permute(1, 0, 2, 3).reshape(3, -1).std(1, unbiased=False)
    floor = 0.1 * std.mean()
    assert torch.allclose(term.std("t"), torch.stack([std[0], std[1], floor]), rtol=1e-5)
    shift = torch.zeros(1, 3, 5, 5)
    shift[:, 1] = 10.0  # ten units off in the loud channel: one of its std, as one unit off in the quiet one
    loud = term(Outputs({"t": maps[:1]}, {"t": maps[:1] + shift}))["features_std.t"]
    quiet = term(Outputs({"t": maps[:1]}, {"t": maps[:1] + shift.roll(-1, dims=1) / 10}))["features_std.t"]
    assert loud.item() == pytest.approx(quiet.item() * (std[0] / std[1]).item() ** 2 * 100, rel=1e-4)


def test_fixed_normalised_and_uncertainty_weightings():
    weights = {"a": 2.0, "b": 0.5, "c": 0.0}
    first = {"a": torch.tensor(4.0), "b": torch.tensor(0.01), "c": torch.tensor(3.0)}
    second = {"a": torch.tensor(2.0), "b": torch.tensor(0.03), "c": torch.tensor(3.0)}
    assert Fixed(weights)(first).item() == pytest.approx(2 * 4 + 0.5 * 0.01)
    norm = Normalised(weights)
    assert norm(first).item() == pytest.approx(2.0 + 0.5 + 0.0)  # each part starts at its weight
    # bias-corrected running mean after two steps: (BETA (1-BETA) L1 + (1-BETA) L2) / (1 - BETA^2)
    m = {k: (BETA * (1 - BETA) * first[k] + (1 - BETA) * second[k]) / (1 - BETA**2) for k in first}
    assert norm(second).item() == pytest.approx(sum(weights[k] * second[k] / m[k] for k in first).item(), rel=1e-6)
    unc = Uncertainty(weights)
    assert unc.learned == ["a", "b"]  # a part of weight 0 gets no log-variance (it would run to -inf)
    with torch.no_grad():
        unc.log_var.copy_(torch.tensor([0.5, -1.0]))
    loss = unc(first)
    expected = math.exp(-0.5) * 2 * 4 + 0.5 + math.exp(1.0) * 0.5 * 0.01 - 1.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()  # d/ds (exp(-s) w L + s) = 1 - exp(-s) w L
    assert unc.log_var.grad.tolist() == pytest.approx([1 - math.exp(-0.5) * 8, 1 - math.exp(1.0) * 0.005], rel=1e-6)
    assert unc.effective() == pytest.approx({"a": 2 * math.exp(-0.5), "b": 0.5 * math.e, "c": 0.0})


def test_features_alone_is_the_study_regression_term_for_term():
    """The objective of features alone: the tap-weighted MSE of losses.feature_regression_loss, same numbers."""
    from segadapt.losses import feature_regression_loss

    target = {"a": torch.randn(2, 4, 3, 3), "b": torch.randn(2, 2, 5, 5)}
    pred = {k: v + torch.randn_like(v) for k, v in target.items()}
    objective = _objective({"features": 1.0}, {"a": 0.2, "b": 0.9})
    loss, parts = objective(Outputs(target, pred))
    want, per_layer = feature_regression_loss(target, pred, {"a": 0.2, "b": 0.9})
    assert torch.equal(loss, want) and {k: float(v) for k, v in parts.items()} == per_layer
    assert objective.features_only and objective.needs_maps and not objective.needs_logits


@pytest.mark.parametrize("weighting, labelled", [("normalised", False), ("uncertainty", True)])
def test_resume_with_every_new_term_ends_like_the_uninterrupted_run(tmp_path, weighting, labelled):
    """The objective's own state (H1's statistics, running means, learned log-variances and their momentum)
    and the labelled D2 draws travel with the resume point: the resumed run ends bit for bit where the
    uninterrupted one does."""
    cfg = tiny_cfg(["pool3"], iterations=6)
    cfg.train.checkpoint_every, cfg.adapt.holdout, cfg.adapt.probes = 3, 2, 3
    cfg.adapt.objective = {"features_std": 1.0, "output_kl": 1.0, "paired_pseudo": 0.5, "entropy": 0.01}
    cfg.adapt.weighting, cfg.adapt.select, cfg.adapt.train_head = weighting, "agreement", True
    if labelled:
        cfg.adapt.d2_labels, cfg.adapt.select = str(_labelled_d2(tmp_path / "labelled")), "labels"
    a = adapt(cfg, tmp_path / "a", make_pairs(10), teacher=_vgg(), h1_meta=META)
    b = tmp_path / "b"
    adapt(cfg, b, make_pairs(10), teacher=_vgg(), h1_meta=META)
    ckpt.checkpoint_path(b, 6).unlink()  # killed right after its step-3 resume point
    for name in ("model.safetensors", "model_selected.safetensors", "selection.csv", "adapt.json"):
        (b / name).unlink()
    r = adapt(cfg, b, make_pairs(10), teacher=_vgg(), h1_meta=META, resume=True)
    for name in ("model.safetensors", "model_selected.safetensors"):
        wa, _ = ckpt.load_model_file(tmp_path / "a" / name)
        wb, _ = ckpt.load_model_file(b / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert r["probes"] == a["probes"] and r["final_weights"] == a["final_weights"]
    assert r["final_loss"] == a["final_loss"] and r["final_term_loss"] == a["final_term_loss"]
    assert set(a["final_term_loss"]) == {"features_std", "output_kl", "paired_pseudo", "entropy",
                                         *(["d2_labels"] if labelled else [])}
    rows = list(csv.DictReader((b / "log.csv").open()))
    assert {"loss_features_std.pool3", "loss_output_kl", "loss_paired_pseudo", "loss_entropy"} <= set(rows[0])
    assert json.loads((b / "adapt.json").read_text())["objective"] == {**cfg.adapt.objective,
                                                                        **({"d2_labels": 1.0} if labelled else {})}


def test_an_output_term_trains_the_head_only_when_asked(tmp_path):
    """adapt(): with train_head false nothing above the deepest tap moves; with auto (= true, measured) the
    head does."""
    frozen_cfg = tiny_cfg(["pool3"], iterations=2)
    frozen_cfg.adapt.objective, frozen_cfg.adapt.probes = {"output_kl": 1.0}, 0
    frozen_cfg.adapt.train_head = False
    adapt(frozen_cfg, tmp_path / "frozen", make_pairs(), teacher=_vgg(), h1_meta=META)
    trained_cfg = copy.deepcopy(frozen_cfg)
    trained_cfg.adapt.train_head = "auto"
    adapt(trained_cfg, tmp_path / "trained", make_pairs(), teacher=_vgg(), h1_meta=META)
    h1 = _vgg().state_dict()
    frozen, meta = ckpt.load_model_file(tmp_path / "frozen")
    assert meta["objective"] == {"output_kl": 1.0} == meta["config"]["adapt"]["objective"]  # the model file says
    trained, _ = ckpt.load_model_file(tmp_path / "trained")
    above = [k for k in h1 if k.startswith(("conv4", "conv5", *HEAD))]
    assert all(torch.equal(frozen[k], h1[k]) for k in above)
    assert not torch.equal(frozen["conv1.0.weight"], h1["conv1.0.weight"])
    assert not torch.equal(trained["classifier.weight"], h1["classifier.weight"])


def test_an_output_term_with_a_teacher_cache_is_one_line(tmp_path):
    cfg = tiny_cfg(["pool3"], iterations=2)
    cfg.adapt.objective, cfg.adapt.teacher_cache = {"output_kl": 1.0}, str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="teacher_cache holds H1's feature maps only"):
        adapt(cfg, tmp_path / "run", make_pairs(), teacher=_vgg(), h1_meta=META)


def test_objective_tables_round_trip_and_replace_the_default_whole(tmp_path):
    cfg = RunConfig()
    cfg.adapt.objective = {"features": 1.0, "output_kl": 0.5, "entropy": 0.01}
    cfg.adapt.weighting, cfg.adapt.train_head, cfg.adapt.select = "uncertainty", True, "agreement"
    cfg.experiment.objectives = [{"features": 1.0}, {"output_kl": 1.0, "entropy": 0.01}]
    (tmp_path / "config.toml").write_text(dumps_toml(cfg))
    back = load_toml(tmp_path / "config.toml")
    assert back == cfg and list(back.adapt.objective) == ["features", "output_kl", "entropy"]
    assert "[adapt.objective]" in dumps_toml(cfg)
    # a table on the command line replaces the default's, it is not merged into it
    only = merge(RunConfig(), parse_override("adapt.objective={output_kl = 1.0}"))
    assert only.adapt.objective == {"output_kl": 1.0}
    assert merge(RunConfig(), parse_override("adapt.weighting=normalised")).adapt.objective == {}  # the model's


@pytest.mark.parametrize("table, match", [
    ({"featurs": 1.0}, r"adapt\.objective: unknown term 'featurs'; choose from features, "),
    ({"features": 1.0, "entropy": -0.01}, r"adapt\.objective\.entropy: -0\.01; a weight must be >= 0"),
    ({"features": 0.0}, r"adapt\.objective: no term with a weight > 0"),
])
def test_an_unknown_term_or_a_negative_weight_is_one_line_naming_the_key(table, match):
    with pytest.raises(ConfigError, match=match) as e:
        from_dict(RunConfig, {"adapt": {"objective": table}})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"experiment\.objectives\[1\]"):
        from_dict(RunConfig, {"experiment": {"objectives": [{"features": 1.0}, table]}})


def test_the_cli_flags_set_the_objective(capsys):
    from segadapt.cli import main

    assert main(["config", "--objective", "features,output_kl=0.5", "--weighting", "normalised",
                 "--select", "agreement"]) == 0
    printed = capsys.readouterr().out
    assert "[adapt.objective]\nfeatures = 1.0\noutput_kl = 0.5" in printed
    assert 'weighting = "normalised"' in printed and 'select = "agreement"' in printed
    assert main(["config", "--objective", "features,kl"]) == 2
    assert "unknown term 'kl'" in capsys.readouterr().err


def test_agreement_is_a_selection_signal_with_its_regret_and_rank_correlation():
    points = [
        {"step": 10, "holdout_loss": 3.0, "entropy": 0.5, "agreement": 0.6, "miou": 0.30},
        {"step": 20, "holdout_loss": 1.0, "entropy": 0.4, "agreement": 0.7, "miou": 0.40},
        {"step": 30, "holdout_loss": 2.0, "entropy": 0.3, "agreement": 0.9, "miou": 0.45},
    ]
    by_loss, by_agreement = agreement(points), agreement(points, "agreement")
    assert by_loss["selected_step"] == 20 and by_loss["regret_points"] == pytest.approx(5.0)
    assert by_agreement["selected_step"] == 30 and by_agreement["regret_points"] == 0.0
    assert by_loss["regret_agreement"] == 0.0 and by_loss["regret_loss"] == pytest.approx(5.0)
    assert by_loss["rank_corr_agreement"] == pytest.approx(1.0) and by_loss["rank_corr_loss"] == pytest.approx(0.5)
    assert better(points[2], points[1], "agreement") and not better(points[2], points[1], "holdout_loss")
    assert set(SIGNALS) == {"holdout_loss", "agreement", "entropy", "labels"}
    assert "regret_labels" not in by_loss  # reported only where the probes measured it (adapt.d2_labels)


def test_adapt_select_agreement_keeps_the_most_agreeing_probe(tmp_path):
    cfg = tiny_cfg(["pool3"], iterations=6)
    cfg.adapt.holdout, cfg.adapt.probes, cfg.adapt.select = 2, 3, "agreement"
    result = adapt(cfg, tmp_path, make_pairs(10), teacher=_vgg(), h1_meta=META)
    assert all(0 <= p["agreement"] <= 1 for p in result["probes"])
    best = max(result["probes"], key=lambda p: p["agreement"])  # max returns the first of equals, as adapt keeps
    assert result["selected_step"] == best["step"]


def test_a_resume_refuses_a_changed_objective_even_a_dropped_term(tmp_path):
    from segadapt.errors import SegadaptError
    from segadapt.run_dir import refuse_changes

    saved = RunConfig()
    saved.adapt.objective = {"features": 1.0, "output_kl": 1.0}
    again = merge(saved, parse_override("adapt.objective={features = 1.0}"))
    with pytest.raises(SegadaptError, match=r"adapt\.objective\.output_kl 1\.0 -> None"):
        refuse_changes(tmp_path, saved, again)
    refuse_changes(tmp_path, saved, merge(saved, parse_override("train.iterations=50")))


def _labelled_d2(folder, k: int = 2, mask=None):
    """k darkened synthetic scenes with their labels, in the layout `segadapt shift` writes for a synthetic D1."""
    import cv2

    from segadapt.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(k, size=(32, 48), split="val")
    for sub in ("images", "labels"):
        (folder / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(k):
        image, labels = scenes.load(i)
        cv2.imwrite(str(folder / "train" / "images" / f"{i}.png"), (image // 2)[..., ::-1])
        cv2.imwrite(str(folder / "train" / "labels" / f"{i}.png"), (labels if mask is None else mask).astype("uint8"))
    return folder


def test_a_few_d2_labels_add_their_cross_entropy_and_their_miou_to_every_probe(tmp_path):
    cfg = tiny_cfg(["pool3"], iterations=4)
    cfg.adapt.holdout, cfg.adapt.probes, cfg.adapt.select = 2, 2, "labels"
    cfg.adapt.d2_labels = str(_labelled_d2(tmp_path / "labelled"))
    result = adapt(cfg, tmp_path / "run", make_pairs(10), teacher=_vgg(), h1_meta=META)
    assert result["objective"] == {"features": 1.0, "d2_labels": 1.0} and result["final_term_loss"]["d2_labels"] > 0
    assert all(0 <= p["labels"] <= 1 for p in result["probes"])
    assert result["selected_step"] == max(result["probes"], key=lambda p: p["labels"])["step"]
    h2, _ = ckpt.load_model_file(tmp_path / "run")
    h1 = _vgg().state_dict()
    assert not all(torch.equal(h2[k], h1[k]) for k in h1 if k.startswith(HEAD))  # train_head auto: the head trains
    assert "loss_d2_labels" in next(csv.DictReader((tmp_path / "run" / "log.csv").open()))


def test_the_d2_labels_term_reaches_the_head_only_with_train_head():
    teacher = _vgg()
    for head in (False, True):
        student = copy.deepcopy(teacher)
        objective = _objective({"features": 1.0}, {"pool3": 1.0}, d2_labels="given", train_head=head)
        trainable = trainable_parameters(student, ["pool3"], trains_head(AdaptConfig(train_head=head), objective))
        ids = {id(p) for p in trainable}
        for p in student.parameters():
            p.requires_grad_(id(p) in ids)
        x = torch.rand(2, 3, 32, 48)
        labels = torch.randint(7, (2, 32, 48))
        labels[:, :4] = 255  # the ignore index: no loss there
        out = _outputs(teacher, student, objective, ["pool3"], x, x * 0.5)
        out.labelled_logits, out.labels = student(x), labels
        objective(out)[0].backward()
        reached = {n for n, p in student.named_parameters() if p.grad is not None}
        assert ("classifier.weight" in reached) == head and "conv1.0.weight" in reached


def test_d2_labels_of_the_wrong_size_or_classes_are_one_line_naming_the_file(tmp_path):
    import numpy as np

    from segadapt.errors import DataError

    cfg = tiny_cfg(["pool3"], iterations=2)
    for name, mask, match in [("size", np.zeros((16, 48)), r"labels/0\.png: mask is 48x16 but image 0\.png is 48x32"),
                              ("classes", np.full((32, 48), 9), r"labels/0\.png: label values \[9\] outside 0\.\.6")]:
        cfg.adapt.d2_labels = str(_labelled_d2(tmp_path / name, k=1, mask=mask))
        with pytest.raises(DataError, match=match) as e:
            adapt(cfg, tmp_path / f"run-{name}", make_pairs(), teacher=_vgg(), h1_meta=META)
        assert "\n" not in str(e.value)
    cfg.adapt.d2_labels, cfg.adapt.select = "", "labels"
    with pytest.raises(ConfigError, match="adapt.select = labels picks by the mIoU on labelled D2 images"):
        adapt(cfg, tmp_path / "run-select", make_pairs(), teacher=_vgg(), h1_meta=META)


def test_labelled_images_alone_pick_by_their_miou_not_by_a_held_out_loss_that_does_not_exist(tmp_path):
    """Cross-entropy on a few D2 labels alone has no term on pairs: selecting by held-out loss is refused in one
    line (it once ran into the first probe and stopped with a StopIteration); select = labels runs."""
    cfg = tiny_cfg(["pool3"], iterations=2)
    cfg.adapt.holdout, cfg.adapt.probes = 2, 1
    cfg.adapt.objective, cfg.adapt.train_head = {"d2_labels": 1.0}, True
    cfg.adapt.d2_labels, cfg.adapt.select = str(_labelled_d2(tmp_path / "labelled")), "holdout_loss"
    with pytest.raises(ConfigError, match="only d2_labels, so there is no held-out loss to pick a checkpoint by"):
        adapt(cfg, tmp_path / "run", make_pairs(10), teacher=_vgg(), h1_meta=META)
    cfg.adapt.select = "labels"
    result = adapt(cfg, tmp_path / "run2", make_pairs(10), teacher=_vgg(), h1_meta=META)
    assert result["selected_step"] == 2 and result["objective"] == {"d2_labels": 1.0}
