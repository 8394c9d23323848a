"""The label-free peers (segadapt.peers): AdaBN moves BatchNorm statistics to D2's and nothing else, TENT trains
only the normalisation layers' affine parameters and lowers the entropy, self-training learns from H1's confident
pixels alone; none reads a D2 label; each runs from the command line and resumes exactly."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from segadapt import checkpoint as ckpt
from segadapt.cli import main
from segadapt.config import preset
from segadapt.data import ImageDataset, JointTransform
from segadapt.data.pairs import ShiftedSource
from segadapt.data.synthetic import SyntheticScenes
from segadapt.errors import ConfigError
from segadapt.models.factory import load_factory
from segadapt.objectives.pseudo import confident_pixels
from segadapt.peers import entropy_loss, is_norm, pseudo_label_loss, run_peer
from tiny_hf import SEGFORMER

SIZE = (32, 48)


def darken(image: np.ndarray, seed: int) -> np.ndarray:
    return (image * 0.5 + 40).astype(np.uint8)


class LabelsForbidden(ShiftedSource):
    """A D2 whose labels raise: a peer must never ask for them."""

    def load(self, i):
        raise AssertionError("a peer read a D2 label")


def d2_images(n: int = 8, augment: bool = False) -> ImageDataset:
    """D2 = darkened synthetic scenes, images alone; without `augment` each item is the whole image as it is."""
    d2 = LabelsForbidden(SyntheticScenes(n, size=SIZE), darken)
    scale = (0.8, 1.2) if augment else (1.0, 1.0)
    return ImageDataset(d2, JointTransform(train=True, crop_size=SIZE, scale_range=scale, hflip=augment))


def peer_cfg(method: str, iterations: int = 3, lr: float = 0.01):
    cfg = preset("synthetic")
    cfg.peer.method = method
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.log_every = iterations, 4, lr, 1
    cfg.train.threads, cfg.train.channels_last, cfg.train.checkpoint_every = 1, False, 0
    return cfg


def bn_cnn() -> nn.Module:
    """tiny_hf's SmallCNN (three BatchNorm layers) behind the model contract, with running statistics unlike D2's."""
    return load_factory("tiny_hf:trained_looking_cnn", kwargs={"width": 6})[0]


def segformer() -> nn.Module:
    """A tiny SegFormer (LayerNorm in the encoder, one BatchNorm in the decode head)."""
    from segadapt.models.hf_dir import build_from_config

    torch.manual_seed(0)
    model = build_from_config({**SEGFORMER, "drop_path_rate": 0.0}, "tiny_hf", num_classes=7)
    with torch.no_grad():  # a trained model's confident predictions, not a fresh one's uniform ones (no gradient)
        model.net.decode_head.classifier.weight.mul_(30)
    return model


def weights(path) -> dict[str, torch.Tensor]:
    return ckpt.load_model_file(path)[0]


def batch(images: ImageDataset) -> torch.Tensor:
    return torch.stack([images[i][0] for i in range(len(images))])


def test_adabn_moves_batchnorm_statistics_to_d2s_and_changes_nothing_else(tmp_path):
    h1 = bn_cnn()
    images = d2_images(8)
    before = {k: v.clone() for k, v in h1.state_dict().items()}
    result = run_peer(peer_cfg("adabn", iterations=2), tmp_path, images, teacher=h1, h1_meta={"arch": "factory"})
    after = weights(tmp_path)
    assert result["applies"] and result["trained_parameters"] == 0
    params = {k for k, _ in h1.named_parameters()}
    assert all(torch.equal(after[k], before[k]) for k in params)  # no gradient step: every weight is H1's
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 6 and all(not torch.equal(after[k], before[k]) for k in stats)
    # two batches of four are exactly one pass over D2: the stem's mean is D2's mean of the stem's conv output
    with torch.no_grad():
        conv = h1.net.stem[0](batch(images))
    d2_mean = conv.mean(dim=(0, 2, 3))
    torch.testing.assert_close(after["net.stem.1.running_mean"], d2_mean, rtol=1e-4, atol=1e-5)
    d2_var = conv.var(dim=(0, 2, 3))
    assert (after["net.stem.1.running_var"] - d2_var).abs().mean() < (before["net.stem.1.running_var"]
                                                                     - d2_var).abs().mean()
    assert all(torch.equal(h1.state_dict()[k], v) for k, v in before.items())  # the caller's H1 untouched


def test_adabn_leaves_a_model_without_batchnorm_unchanged_and_says_so(tmp_path, capsys):
    from segadapt.models.contract import HookedModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 7, 1))
    h1 = HookedModel(net, 7)
    result = run_peer(peer_cfg("adabn"), tmp_path, d2_images(4), teacher=h1, h1_meta={"arch": "x"})
    line = capsys.readouterr().out
    assert line == ("adabn: Sequential has no BatchNorm layer (its normalisation is per sample (LayerNorm/GroupNorm), "
                    "which has no statistics to re-estimate); H2 is H1 unchanged\n")
    assert not result["applies"] and json.loads((tmp_path / "peer.json").read_text())["note"] == line.strip()
    assert all(torch.equal(weights(tmp_path)[k], v) for k, v in h1.state_dict().items())


def test_adabn_on_segformer_moves_only_its_decode_heads_batchnorm(tmp_path):
    h1 = segformer()
    before = {k: v.clone() for k, v in h1.state_dict().items()}
    run_peer(peer_cfg("adabn", iterations=2), tmp_path, d2_images(8), teacher=h1, h1_meta={"arch": "hf"})
    changed = {k for k, v in weights(tmp_path).items() if not torch.equal(v, before[k])}
    assert changed and all(".decode_head.batch_norm." in k for k in changed), changed


@pytest.mark.parametrize("make", [bn_cnn, segformer], ids=["batchnorm", "layernorm"])
def test_tent_trains_only_norm_affine_parameters_and_lowers_the_entropy(tmp_path, make):
    h1 = make()
    norms = {f"{name}.{p}" if name else p for name, m in h1.named_modules() if is_norm(m)
             for p, _ in m.named_parameters(recurse=False)}
    assert norms
    before = {k: v.clone() for k, v in h1.named_parameters()}
    images = d2_images(4)  # one batch of four whole images: every step sees the same batch
    run_peer(peer_cfg("tent", iterations=8, lr=0.5), tmp_path, images, teacher=h1, h1_meta={"arch": "x"})
    after = weights(tmp_path)
    for k, v in before.items():
        assert torch.equal(after[k], v) == (k not in norms), k  # the norms' scales and shifts train, nothing else
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "log.csv").open())]
    assert len(losses) == 8 and losses[-1] < losses[0]
    h2 = make()
    h2.load_state_dict(after)
    with torch.no_grad():  # the adapted model, as evaluate runs it, is more certain on D2 than H1
        assert entropy_loss(h2.eval()(batch(images))) < entropy_loss(h1.eval()(batch(images)))


def test_tent_leaves_a_model_without_norm_layers_unchanged(tmp_path, capsys):
    from segadapt.models import VGGDeepLab

    torch.manual_seed(0)
    h1 = VGGDeepLab(7, width=0.0625)
    result = run_peer(peer_cfg("tent"), tmp_path, d2_images(4), teacher=h1, h1_meta={"arch": "vgg16_deeplab"})
    assert "tent: VGGDeepLab has no normalisation layer" in capsys.readouterr().out and not result["applies"]
    assert all(torch.equal(weights(tmp_path)[k], v) for k, v in h1.state_dict().items())


def test_pseudo_label_loss_counts_only_the_confident_pixels():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    valid = torch.ones(2, 1, 6, 5)
    valid[:, :, :2] = 0
    labels, kept = confident_pixels(torch.softmax(teacher, 1), 0.3, valid)
    loss, share = pseudo_label_loss(student, teacher, 0.3, valid)
    log_p = torch.log_softmax(student, 1).gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(loss, -log_p[kept].mean())  # by hand: the mean over the kept pixels
    assert share == pytest.approx(kept.sum().item() / valid.sum().item()) and 0 < share < 1
    assert not kept[:, :2].any()  # invalid pixels are never pseudo-labels
    other = student.clone()
    other[~kept[:, None].expand_as(other)] = 100 * torch.randn(int((~kept).sum()) * 3)
    torch.testing.assert_close(pseudo_label_loss(other, teacher, 0.3, valid)[0], loss)  # the rest does not count
    at = kept.nonzero()[0].tolist()
    other[at[0], :, at[1], at[2]] += torch.tensor([5.0, -5.0, 0.0])
    assert not torch.allclose(pseudo_label_loss(other, teacher, 0.3, valid)[0], loss)


def test_self_training_learns_from_h1s_confident_pixels_without_a_d2_label(tmp_path):
    h1 = bn_cnn()
    before = {k: v.clone() for k, v in h1.named_parameters()}
    result = run_peer(peer_cfg("self_training", iterations=3), tmp_path, d2_images(8, augment=True), teacher=h1,
                      h1_meta={"arch": "factory"})  # LabelsForbidden: a label read would fail the run
    after = weights(tmp_path)
    assert all(not torch.equal(after[k], v) for k, v in before.items())  # every parameter trains
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert all(0 < float(r["kept"]) < 0.5 for r in rows)  # about pseudo_keep of each class's pixels
    assert result["trained_parameters"] == sum(p.numel() for p in h1.parameters())


def test_unknown_method_and_keep_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="peer.method='dann'; choose one of adabn, tent, self_training"):
        run_peer(peer_cfg("dann"), tmp_path, d2_images(4), teacher=bn_cnn(), h1_meta={})
    cfg = peer_cfg("self_training")
    cfg.adapt.pseudo_keep = 0.0
    with pytest.raises(ConfigError, match=r"adapt.pseudo_keep=0.0: .* in \(0, 1\]"):
        run_peer(cfg, tmp_path, d2_images(4), teacher=bn_cnn(), h1_meta={})


@pytest.mark.parametrize("method", ["tent", "self_training", "adabn"])
def test_a_peer_resumed_from_its_last_checkpoint_ends_as_an_uninterrupted_run(tmp_path, method):
    cfg = peer_cfg(method, iterations=4)
    cfg.train.checkpoint_every = 2
    ref = tmp_path / "ref"
    run_peer(cfg, ref, d2_images(8, augment=True), teacher=bn_cnn(), h1_meta={"arch": "factory"})
    # a crash after step 2's resume point: step 4's checkpoint, the model and the finished marker never written
    crashed = tmp_path / "crashed"
    shutil.copytree(ref, crashed)
    for path in (ckpt.checkpoint_path(crashed, 4), crashed / "model.safetensors", crashed / "run.json",
                 crashed / "peer.json"):
        path.unlink()
    assert ckpt.latest_checkpoint(crashed) == ckpt.checkpoint_path(crashed, 2)
    run_peer(cfg, crashed, d2_images(8, augment=True), teacher=bn_cnn(), h1_meta={"arch": "factory"}, resume=True)
    a, b = weights(ref), weights(crashed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the command line ---------------------------------------------------------------------------------

CLI = ["--dataset", "synthetic", "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
       "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2", "--iterations", "2", "--batch-size", "2",
       "--threads", "1", "--filter", "ripple", "--trust-factory", "tiny_hf:small_cnn"]


@pytest.mark.parametrize("method", ["adabn", "tent", "self_training"])
def test_each_peer_runs_from_the_command_line(tmp_path, method, capsys):
    from segadapt.models.loading import load_model
    from tiny_hf import factory_model_file

    h1 = factory_model_file(tmp_path / "h1")
    out = tmp_path / method
    assert main(["peer", "--method", method, "--h1", str(h1), *CLI, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"adapted model ({method}): {out / 'model.safetensors'}" in printed
    assert "next: segadapt distortion" in printed
    model, meta = load_model(out, trusted_factories=["tiny_hf:small_cnn"])  # as evaluate and predict load it
    assert meta["peer"] == method and meta["adapted_from"] == str(h1)
    assert json.loads((out / "run.json").read_text())["kind"] == "peer"
    assert json.loads((out / "peer.json").read_text())["step"] == 2
    changed = [k for k, v in weights(h1).items() if not torch.equal(weights(out)[k], v)]
    assert changed  # each peer acts on a BatchNorm CNN
    if method == "adabn":
        assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    # already finished: a second --resume says so; a training's --resume is pointed back to `segadapt peer`
    assert main(["peer", "--resume", str(out)]) == 0
    assert "already finished at step 2" in capsys.readouterr().out
    assert main(["adapt", "--resume", str(out)]) == 2
    assert f"a label-free peer's run; continue it with segadapt peer --resume {out}" in capsys.readouterr().err


def test_the_command_line_asks_for_a_method(tmp_path, capsys):
    from tiny_hf import factory_model_file

    h1 = factory_model_file(tmp_path / "h1")
    assert main(["peer", "--h1", str(h1), *CLI, "--out", str(tmp_path / "p")]) == 2
    assert "--method (adabn | tent | self_training) are required" in capsys.readouterr().err
    assert main(["peer", "--method", "dann", "--h1", str(h1), *CLI, "--out", str(tmp_path / "p")]) == 2
    assert "peer.method" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_a_folder_of_unlabelled_d2_images_needs_no_d1_pairs(tmp_path):
    """No pairing: D2 images whose names match no D1 image, and that have no labels at all."""
    import cv2

    from tiny_hf import factory_model_file

    folder = tmp_path / "d2"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        cv2.imwrite(str(folder / f"field_photo_{k}.png"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    h1, out = factory_model_file(tmp_path / "h1"), tmp_path / "st"
    cli = [a for a in CLI if a not in ("--filter", "ripple")]
    assert main(["peer", "--method", "self_training", "--h1", str(h1), *cli, "--d2-dir", str(folder),
                 "--out", str(out)]) == 0
    assert json.loads((out / "peer.json").read_text())["step"] == 2
