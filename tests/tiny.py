"""Shared test settings: a supervised run small enough to train in a second on the synthetic scenes."""

from segadapt.config import RunConfig, preset


def tiny_train_config(iterations: int, width: float, checkpoint_every: int, batch: int = 4) -> RunConfig:
    """The synthetic preset at 32x48, 24 train and 4 val scenes, one thread, a log row every step."""
    cfg = preset("synthetic")
    cfg.model.width = width
    cfg.data.synthetic_size = [32, 48]
    cfg.data.crop_size = [32, 48]
    cfg.data.synthetic_train, cfg.data.synthetic_val = 24, 4
    cfg.train.iterations, cfg.train.batch_size = iterations, batch
    cfg.train.checkpoint_every, cfg.train.log_every, cfg.train.threads = checkpoint_every, 1, 1
    return cfg


def png_declaring(width: int, height: int) -> bytes:
    """A 69-byte RGB PNG whose header (valid CRCs) claims width x height; its data is a few zero rows."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64)))
            + chunk(b"IEND", b""))


CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
                  "bicyclist")


def tiny_model_file(path, model=None, width: float = 0.0625, base_size: int = 0, seed: int = 0,
                    pixel_factor: float | None = None):
    """A CamVid-classed VGGDeepLab (or `model`) saved as a segadapt model file, with the camvid preset's data
    settings but `base_size` (0: predicted at the size stored) and the factor its training frames were resized
    by (`pixel_factor`, as training records it; None: frames of many sizes)."""
    import torch

    from segadapt.checkpoint import save_model
    from segadapt.config import to_dict
    from segadapt.data.palettes import CAMVID
    from segadapt.models import build_model

    cfg = preset("camvid")
    cfg.model.width, cfg.data.base_size = width, base_size
    torch.manual_seed(seed)
    model = model if model is not None else build_model("vgg16_deeplab", len(CAMVID_CLASSES), width)
    meta = {"arch": "vgg16_deeplab", "width": width, "num_classes": len(CAMVID_CLASSES),
            "class_names": list(CAMVID_CLASSES), "ignore_index": 11, "palette": [list(c) for c in CAMVID],
            "dataset": "camvid", "step": 0, "config": to_dict(cfg), "pixel_factor": pixel_factor}
    save_model(path, model, meta)
    return path
