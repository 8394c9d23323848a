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
