import copy
import json
import math

import numpy as np
import pytest

from segadapt import experiment
from segadapt.config import preset
from segadapt.data import d2
from segadapt.errors import ConfigError, DataError
from segadapt.shifts import FILTERS


def darken(name: str, severity: float, image: np.ndarray, seed: int, base_size: int = 0) -> np.ndarray:
    return (image * (1 - 0.6 * severity)).astype(np.uint8)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(d2, "_apply_filter", darken)
    monkeypatch.setitem(FILTERS, "dark", darken)  # a known filter name for the sweep's up-front check
    cfg = preset("demo")
    cfg.data.synthetic_size = cfg.data.crop_size = [32, 48]
    cfg.data.synthetic_train, cfg.data.synthetic_val = 16, 4
    cfg.train.iterations, cfg.train.batch_size, cfg.train.threads = 4, 4, 1
    cfg.experiment.filters = ["dark"]
    cfg.experiment.baselines = ["B0", "B1", "B2"]  # the demo leaves B1 out for time; the sweep runs all three
    cfg.experiment.layer_presets = ["pool2", "all_inc"]
    cfg.experiment.iterations = 3
    cfg.experiment.materialise_d2 = False  # the stand-in filter lives in this process only
    cfg.experiment.figure_images, cfg.experiment.reconstruct_steps = 1, 3
    return cfg


def test_sweep_writes_tables_and_plots(tmp_path, tiny):
    tiny.experiment.seeds = [0, 1]
    results = experiment.run_experiment(tiny, tmp_path)
    methods = {(e["shift"], e["method"]) for e in results["summary"]}
    assert methods == {("none", "H1"), *(("dark", m) for m in ("B0", "B1", "B2", "H2:pool2", "H2:all_inc"))}
    assert all(e["seeds"] == 2 for e in results["summary"])
    assert results["distortion"]["dark"] >= 0
    for name in ("results.json", "results.csv", "results.md", "methods.png", "layers.png", "config.toml"):
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "results.md").read_text()
    assert "| B2 |" in md and "H2:all_inc" in md and "Distortion of H1" in md and "±" in md
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["method"] == "H1"
    assert (tmp_path / "seed1" / "dark" / "H2-pool2" / "model.safetensors").exists()
    sel = {(r["seed"], r["method"]) for r in results["selection"]}
    assert sel == {(s, m) for s in (0, 1) for m in ("H2:pool2", "H2:all_inc")}
    assert all(0 <= r["selected_miou"] <= 1 for r in results["selection"])
    assert "Label-free checkpoint selection" in md


def test_sweep_writes_report_with_figures(tmp_path, tiny):
    tiny.experiment.baselines = ["B0", "B2"]
    results = experiment.run_experiment(tiny, tmp_path)
    figs = tmp_path / "figures" / "dark"
    # the best of the two presets feeds the feature grid (no pool5 in this sweep); B2 and H2 in the overlay
    best = max((e for e in results["summary"] if e["method"].startswith("H2:")), key=lambda e: e["miou"])
    tag = best["method"].replace(":", "-")
    assert len(list((figs / "features").glob(f"features_*_{tag}.png"))) == 1
    assert json.loads((figs / "features" / "features.json").read_text())["taps"][-1] == "pool5"
    assert len(list((figs / "overlays").glob("overlay_*.png"))) == 1
    assert {p.name.split("_")[-2] for p in (figs / "reconstruction").glob("*_comparison.png")} == {"H1", tag}
    page = (tmp_path / "report.html").read_text()
    assert results["report"] == str(tmp_path / "report.html")
    assert page.count("data:image/png;base64,") == 2 + 1 + 1 + 4  # plots, grid, overlay, 2x(comparison+loss)


def test_sweep_runs_the_label_free_peers_beside_the_baselines(tmp_path, tiny):
    tiny.experiment.baselines = ["B0", "adabn", "tent", "self_training"]
    tiny.experiment.layer_presets, tiny.experiment.figure_images = ["pool2"], 0
    results = experiment.run_experiment(tiny, tmp_path)
    miou = {e["method"]: e["miou"] for e in results["summary"] if e["shift"] == "dark"}
    assert list(miou) == ["B0", "adabn", "tent", "self_training", "H2:pool2"]
    # the sweep's VGG has no normalisation layer: adabn and tent leave H1 as it is, and score as B0 does
    assert miou["adabn"] == miou["tent"] == miou["B0"]
    for method in ("adabn", "tent", "self_training"):
        run = tmp_path / "seed0" / "dark" / method
        peer = json.loads((run / "peer.json").read_text())
        assert peer["method"] == method and peer["applies"] == (method == "self_training")
        assert (run / "model.safetensors").is_file()
    assert json.loads((tmp_path / "seed0" / "dark" / "self_training" / "peer.json").read_text())["step"] == 3
    written = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in written["rows"]} >= {"adabn", "tent", "self_training"}
    md = (tmp_path / "results.md").read_text()
    assert "| tent |" in md and "| self_training |" in md and "| adabn |" in md
    assert "adabn: H1 with its BatchNorm statistics re-estimated" in md and "tent: " in md
    assert "self_training: H1 fine-tuned on D2 images" in md and "B2:" not in md


def test_distortion_matches_definition(tmp_path, tiny):
    tiny.experiment.baselines = ["B0"]
    tiny.experiment.layer_presets = []
    r = experiment.run_experiment(tiny, tmp_path)
    e = {x["method"]: x for x in r["summary"]}
    h1, b0 = e["H1"], e["B0"]
    expected = 0.5 * (abs(h1["mean_acc"] - b0["mean_acc"]) / h1["mean_acc"] + abs(h1["miou"] - b0["miou"]) / h1["miou"])
    assert r["distortion"]["dark"] == pytest.approx(expected)


def test_materialised_d2_matches_on_the_fly_filter(tmp_path):
    """The sweep writes D2 once and reads it back; it must be the very images the filter makes."""
    cfg = preset("demo")
    cfg.data.synthetic_size = [32, 48]
    cfg.data.synthetic_train, cfg.data.synthetic_val = 6, 3
    shift = d2.materialise_d2(cfg, "ripple", tmp_path / "d2")
    assert shift.d2_dir == str(tmp_path / "d2") and shift.filter == "ripple"
    for split in ("train", "val"):
        from_dir = d2.d2_source(d2.with_shift(cfg, shift), split)
        live = d2.d2_source(cfg, split)
        assert len(from_dir) == len(live)
        for i in range(len(live)):
            (a, ma), (b, mb) = from_dir.load(i), live.load(i)
            assert from_dir.stem(i) == live.stem(i)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(from_dir.load(0)[0], experiment.build_source(cfg.data, "val").load(0)[0])


def test_sweep_with_a_teacher_cache_keeps_one_per_seed_and_preset(tmp_path, tiny):
    tiny.experiment.baselines, tiny.experiment.figure_images = [], 0
    tiny.adapt.teacher_cache = str(tmp_path / "cache")
    results = experiment.run_experiment(tiny, tmp_path / "sweep")
    assert {e["method"] for e in results["summary"]} == {"H1", "H2:pool2", "H2:all_inc"}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["seed0-all_inc", "seed0-pool2"]
    assert (tmp_path / "sweep" / "report.html").is_file()  # tables and plots, even with no figures


def test_sweep_runs_each_preset_once_per_objective_and_reports_every_selection_signal(tmp_path, tiny):
    tiny.experiment.baselines, tiny.experiment.figure_images = ["B0"], 0
    tiny.experiment.layer_presets = ["pool2"]
    tiny.experiment.objectives = [{"features": 1.0}, {"output_kl": 1.0, "entropy": 0.01}]
    results = experiment.run_experiment(tiny, tmp_path)
    h2 = {"H2:pool2+features", "H2:pool2+output_kl+entropy=0.01"}
    assert {e["method"] for e in results["summary"]} == {"H1", "B0", *h2}
    run = tmp_path / "seed0" / "dark" / "H2-pool2+output_kl+entropy=0.01"
    assert json.loads((run / "adapt.json").read_text())["objective"] == {"output_kl": 1.0, "entropy": 0.01}
    assert {r["method"] for r in results["selection"]} == h2
    assert all({"rank_corr_agreement", "regret_agreement", "regret_loss", "regret_entropy"} <= set(r)
               for r in results["selection"])
    md = (tmp_path / "results.md").read_text()
    assert "rank corr, agreement" in md and "H2:<layers>+<terms>" in md
    assert "rank corr, agreement" in (tmp_path / "report.html").read_text()
    tiny.experiment.objectives = [{"output_kl": 1.0}, {"output_kl": 1.0, "entropy": 0.0}]
    with pytest.raises(ConfigError, match="experiment.objectives: output_kl listed twice"):
        experiment.check_experiment(tiny)


def test_sweep_settings_are_checked_before_h1_trains(tmp_path):
    cfg = preset("demo")
    for key, value, match in [("seeds", [0, 0], "0 listed twice"),
                              ("layer_presets", ["pool5", "pool5"], "pool5 listed twice"),
                              ("baselines", ["B7"], "unknown 'B7'")]:
        bad = preset("demo")
        setattr(bad.experiment, key, value)
        with pytest.raises(ConfigError, match=match):
            experiment.check_experiment(bad)
    cfg.shift.d2_dir, cfg.experiment.filters = str(tmp_path), ["photocopy", "ripple"]
    with pytest.raises(ConfigError, match="one experiment.filters entry"):
        experiment.check_experiment(cfg)
    cfg.experiment.filters = ["photocopy"]
    with pytest.raises(DataError, match=r"shift.d2_dir = .*no usable D2 for split 'train'"):
        experiment.check_experiment(cfg)


def test_scores_of_zero_stay_zero_and_nan_is_written_as_null(tmp_path):
    s = experiment._scores_from({"val": {"pixel_acc": 0.0, "mean_acc": 0.0, "miou": 0.0}})
    assert (s.pixel_acc, s.mean_acc, s.miou) == (0.0, 0.0, 0.0)
    nan = float("nan")
    rows = [{"seed": 0, "shift": "none", "method": "H1", "mean_acc": 0.5, "miou": 0.4, "pixel_acc": 0.6},
            {"seed": 0, "shift": "dark", "method": "B0", "mean_acc": nan, "miou": nan, "pixel_acc": nan}]
    results = experiment.summarise(rows, ["dark"]) | {"selection": [], "selection_across_presets": {}}
    experiment.write_results(results, tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"][1]["miou"] is None and written["distortion"]["dark"] is None
    assert "| B0 | n/a | n/a | n/a |" in (tmp_path / "results.md").read_text()


def test_the_table_legend_names_only_the_baselines_that_ran():
    from segadapt.viz.report import method_legend

    legend = method_legend({"H1", "B0", "B2", "H2:pool5"})
    assert "B0: H1 on D2." in legend and "B2: H1 fine-tuned" in legend and "B1" not in legend
    assert "H2:<layers>" in legend


def test_the_selection_table_says_n_a_for_a_signal_the_probes_did_not_hold():
    """Cross-entropy on a few D2 labels alone measures no held-out loss: its row reads n/a there, not a KeyError
    (which once ended a finished sweep before results.md was written)."""
    from segadapt.viz.report import _selection_markdown

    row = {"seed": 0, "shift": "photocopy", "method": "H2:stage4+d2_labels", "selected_step": 300,
           "selected_miou": 0.4, "best_miou": 0.41, "best_step": 240, "final_miou": 0.4, "regret_points": 1.0,
           "regret_agreement": 1.0, "rank_corr_agreement": 0.5, "regret_entropy": 2.0, "rank_corr_entropy": -0.1}
    line = [ln for ln in _selection_markdown({"selection": [row]}) if "d2_labels" in ln][0]
    assert "| n/a / 1.00 / 2.00 | n/a | 0.50 | -0.10 |" in line


def test_a_method_that_diverges_is_recorded_and_the_sweep_goes_on(tmp_path, tiny, capsys):
    """A learning rate at which one method's loss goes non-finite used to end the whole sweep; now that method is
    a row marked diverged (no scores) and every other method still runs and is written."""
    tiny.experiment.baselines = ["B0", "B2"]
    tiny.experiment.layer_presets, tiny.experiment.figure_images = ["pool1", "pool2"], 0
    tiny.experiment.finetune_lr = 1e30  # B2 diverges at once; the regressions keep the sweep's rate
    results = experiment.run_experiment(tiny, tmp_path)
    rows = {r["method"]: r for r in results["rows"] if r["shift"] == "dark"}
    assert "loss became" in rows["B2"]["diverged"] and math.isnan(rows["B2"]["miou"])
    assert all(math.isfinite(rows[m]["miou"]) for m in ("B0", "H2:pool1", "H2:pool2"))
    written = json.loads((tmp_path / "results.json").read_text())
    b2 = next(e for e in written["summary"] if e["method"] == "B2" and e["shift"] == "dark")
    assert b2["diverged"] == 1 and b2["miou"] is None
    assert "| B2 (1 of 1 diverged) | n/a | n/a | n/a |" in (tmp_path / "results.md").read_text()
    assert "segadapt: B2 diverged" in capsys.readouterr().err


def test_a_stopped_sweep_continues_where_it_was(tmp_path, tiny, monkeypatch):
    """Stopped during its second regression, the sweep run again reuses every finished method (same scores, no
    training), resumes the unfinished one from its resume point, and refuses to continue with other settings."""
    tiny.experiment.baselines, tiny.experiment.figure_images = ["B0", "B2"], 0
    tiny.experiment.layer_presets = ["pool1", "pool2"]
    real_adapt = experiment.adapt

    def stopped(cfg, run_dir, *args, **kwargs):
        if run_dir.name == "H2-pool2":  # stopped after its first step: a resume point, not finished
            short = copy.deepcopy(cfg)
            short.train.iterations, short.train.checkpoint_every = 1, 1
            real_adapt(short, run_dir, *args, **kwargs)
            info = json.loads((run_dir / "run.json").read_text())
            (run_dir / "run.json").write_text(json.dumps({**info, "state": "running"}))  # as a stop leaves it
            (run_dir / "first_run.txt").write_text("kept only if the run is resumed, not redone")
            raise KeyboardInterrupt
        return real_adapt(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(experiment, "adapt", stopped)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(tiny, tmp_path)
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "seed0").rglob("*.json") if p.name in
                ("metrics.json", "adapt.json") and p.parent.name != "H2-pool2"}
    assert {p.parent.name for p in finished} == {"H1", "B2", "H2-pool1"}
    assert json.loads((tmp_path / "seed0" / "dark" / "H2-pool2" / "run.json").read_text())["state"] == "running"
    monkeypatch.setattr(experiment, "adapt", real_adapt)
    trained: list[str] = []
    real_train = experiment.train
    monkeypatch.setattr(experiment, "train", lambda cfg, run_dir, **kw: trained.append(run_dir.name)
                        or real_train(cfg, run_dir, **kw))
    results = experiment.run_experiment(tiny, tmp_path)
    assert trained == []  # H1 and B2 were finished: reused, not retrained
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # H2:pool1 too
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["H1", "B0", "B2", "H2:pool1", "H2:pool2"]
    resumed = json.loads((tmp_path / "seed0" / "dark" / "H2-pool2" / "adapt.json").read_text())
    assert resumed["step"] == 3  # continued from its resume point at step 1 to the sweep's 3 steps
    assert (tmp_path / "seed0" / "dark" / "H2-pool2" / "first_run.txt").is_file()  # resumed in place
    tiny.experiment.iterations = 5
    with pytest.raises(ConfigError, match="holds a sweep with other settings"):
        experiment.run_experiment(tiny, tmp_path)


def test_an_objective_that_reads_no_feature_map_runs_once_not_once_per_preset():
    """With the head training, output-level terms train every parameter whatever the layer preset: one run
    (at the deepest preset) stands for all; feature terms, or a frozen head, still run per preset."""
    from segadapt.config import AdaptConfig

    ex = preset("demo").experiment
    ex.layer_presets = ["pool2", "pool5", "all_inc"]
    ex.objectives = [{"features": 1.0}, {"output_kl": 1.0, "paired_pseudo": 1.0}]
    got = [(p, experiment.objective_label(o)) for p, _, o in experiment.h2_variants(ex, AdaptConfig(), {}, "pool5")]
    assert got == [("pool2", "features"), ("pool5", "features"), ("pool5", "output_kl+paired_pseudo"),
                   ("all_inc", "features")]
    ex.objectives = []  # no table: adapt.objective, else the architecture's default
    combo = {"output_kl": 1.0, "paired_pseudo": 1.0}
    assert [p for p, _, _ in experiment.h2_variants(ex, AdaptConfig(), combo, "pool5")] == ["pool5"]
    assert [p for p, _, _ in experiment.h2_variants(ex, AdaptConfig(), combo, "")] == ["all_inc"]
    frozen = AdaptConfig(train_head=False)  # only the layers below the tap train: each preset is its own run
    assert len(experiment.h2_variants(ex, frozen, combo, "pool5")) == 3
