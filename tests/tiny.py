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
