"""Scoring batches images of one size together: the confusion matrix must be the one image-at-a-time gives."""

import torch
from torch.utils.data import Dataset

from segadapt.evaluate import confusion, same_size_batches
from segadapt.models import build_model


class Frames(Dataset):
    """Random frames of the given sizes, with random labels (some ignored)."""

    def __init__(self, sizes: list[tuple[int, int]], classes: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [(torch.randn(3, h, w, generator=g), torch.randint(0, classes + 1, (h, w), generator=g))
                      for h, w in sizes]
        for _, mask in self.items:
            mask[mask == classes] = 255

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def test_batches_join_only_equal_sizes_in_order_and_respect_the_pixel_cap():
    sizes = [(8, 8)] * 5 + [(8, 16)] * 2 + [(8, 8)]
    pairs = [(torch.full((1, 3, h, w), float(i)), torch.zeros(1, h, w)) for i, (h, w) in enumerate(sizes)]
    batches = list(same_size_batches(pairs, max_pixels=3 * 64))
    assert [b[0].shape[0] for b in batches] == [3, 2, 1, 1, 1]  # cap of 3 frames of 8x8; 8x16 is over 1.5
    assert [int(v) for b in batches for v in b[0][:, 0, 0, 0]] == list(range(8))  # order kept
    assert all(len({tuple(x.shape[-2:]) for x in b[0]}) == 1 for b in batches)


def test_batched_scoring_equals_one_image_at_a_time():
    torch.manual_seed(0)
    model = build_model("vgg16_deeplab", 5, 0.125)
    data = Frames([(32, 48)] * 6 + [(40, 40)] * 3 + [(32, 48)] * 2)
    cpu = torch.device("cpu")
    one = confusion(model, data, 5, 255, cpu, batch_pixels=1)
    together = confusion(model, data, 5, 255, cpu)
    assert one.sum() == together.sum() == sum(int((m != 255).sum()) for _, m in data.items)
    # float sums in another order may flip a near-tied argmax; nothing more
    assert (one - together).abs().sum() <= 0.001 * one.sum()
