import numpy as np
import pytest
import torch

from energy_cli.data import embedded, synthetic
from energy_cli.data.batches import Normalizer, random_crop_flip
from energy_cli.data.images import (
    ImageSet,
    adapt,
    match_channels,
    resize_images,
    to_grey,
)


def test_digits_split_is_fixed_and_stratified():
    train, test = embedded.load_digits_split()
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.dtype == torch.uint8 and train.shape == (1, 8, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37       # about 36 per class
    again, _ = embedded.load_digits_split()
    assert torch.equal(train.images, again.images)


def test_digits_normalisation_in_config_matches_data(compose):
    train, _ = embedded.load_digits_split()
    cfg = compose("train")
    x = train.images.float() / 255
    assert float(x.mean()) == pytest.approx(cfg.dataset.mean[0], abs=1e-3)
    assert float(x.std()) == pytest.approx(cfg.dataset.std[0], abs=1e-3)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_photo_patches(shape):
    a = embedded.china_patches(200, shape, seed=0)
    assert a.images.shape == (200, *shape) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, embedded.china_patches(200, shape, seed=0).images)
    assert not torch.equal(a.images, embedded.china_patches(200, shape, seed=1).images)
    flowers = embedded.flower_patches(200, shape, seed=0)
    assert not torch.equal(a.images, flowers.images)
    assert float(a.images.float().std()) > 10   # real image content, not a constant


def test_patches_are_area_averages_of_crops():
    """A crop of side 16 resized to 8 is the 2x2 mean of the grey crop."""
    from sklearn.datasets import load_sample_image

    img = torch.from_numpy(np.array(load_sample_image("china.jpg"))).permute(2, 0, 1)[None]
    grey = to_grey(img)[0, 0].float()
    patch = embedded.photo_patches("china.jpg", 1, (1, 8, 8), seed=5, min_side=16, max_side=16)[0, 0].float()
    # find the crop position by brute force over the pooled image
    pooled = torch.nn.functional.avg_pool2d(grey[None, None], 2, stride=1)[0, 0]  # all 2x2 means
    # the patch equals pooled[top::2, left::2][:8, :8] for some top/left
    found = False
    for top in range(0, grey.shape[0] - 15):
        row = pooled[top, :]
        candidates = ((row[: grey.shape[1] - 15] - patch[0, 0]).abs() <= 0.5).nonzero().flatten()
        for left in candidates.tolist():
            window = pooled[top:top + 16:2, left:left + 16:2]
            if (window.round() - patch).abs().max() <= 1:
                found = True
                break
        if found:
            break
    assert found


@pytest.mark.parametrize("name", ["gaussian", "uniform", "rademacher", "blobs"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_synthetic_sets(name, shape):
    s = getattr(synthetic, name)(300, shape, seed=0)
    assert s.images.shape == (300, *shape) and s.images.dtype == torch.uint8
    assert torch.equal(s.images, getattr(synthetic, name)(300, shape, seed=0).images)
    x = s.images.float() / 255
    if name == "uniform":
        assert float(x.mean()) == pytest.approx(0.5, abs=0.02)
    if name == "rademacher":
        assert set(torch.unique(s.images).tolist()) == {0, 255}
    if name == "gaussian":
        assert float(x.mean()) == pytest.approx(0.5, abs=0.02)
        assert float(x.std()) == pytest.approx(0.24, abs=0.02)   # 0.25 before clipping
    if name == "blobs":
        assert float((x == 0).float().mean()) > 0.1   # thresholded background


def test_channel_conversion():
    rgb = torch.tensor([[[[255]], [[0]], [[0]]]], dtype=torch.uint8)   # pure red, 1x1
    assert to_grey(rgb).item() == round(0.299 * 255)
    grey = torch.full((2, 1, 4, 4), 7, dtype=torch.uint8)
    assert match_channels(grey, 3).shape == (2, 3, 4, 4) and int(match_channels(grey, 3).max()) == 7


def test_resize_area_and_centre_crop():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4) * 10
    small = resize_images(x, 2)
    want = torch.tensor([[25, 45], [105, 125]], dtype=torch.uint8)   # 2x2 block means
    assert torch.equal(small[0, 0], want)
    wide = torch.zeros((1, 1, 4, 8), dtype=torch.uint8)
    wide[..., 2:6] = 200                                             # a bright centre band
    out = resize_images(wide, 4)                                     # shorter side 4 -> centre crop 4 of 8
    assert out.shape == (1, 1, 4, 4) and int(out.min()) == 200
    up = resize_images(torch.full((1, 3, 8, 8), 90, dtype=torch.uint8), 32)
    assert up.shape == (1, 3, 32, 32) and int(up.min()) == 90 and int(up.max()) == 90


def test_adapt_rgb32_to_grey8():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = adapt(x, (1, 8, 8))
    assert out.shape == (5, 1, 8, 8) and out.dtype == torch.uint8


def test_imageset_validates():
    with pytest.raises(ValueError):
        ImageSet("x", torch.zeros((2, 1, 4, 4)))          # not uint8
    with pytest.raises(ValueError):
        ImageSet("x", torch.zeros((2, 1, 4, 4), dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


def test_crop_and_flip_are_shifts_and_mirrors():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    same = random_crop_flip(x, 0, False, g)
    assert torch.equal(same, x)
    out = random_crop_flip(x, 2, True, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        options = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        options += [o.flip(2) for o in options]
        assert any(torch.equal(out[i], o) for o in options)
    flipped = sum(torch.equal(random_crop_flip(x[:1], 0, True, torch.Generator().manual_seed(s)), x[:1].flip(3))
                  for s in range(40))
    assert 8 < flipped < 32


def test_normalizer():
    norm = Normalizer([0.5], [0.25])
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert norm(x).flatten().tolist() == pytest.approx([-2.0, 2.0])


def test_normalizer_gives_the_same_values_in_either_memory_format():
    import torch

    from energy_cli.data.batches import Normalizer

    x = torch.randint(0, 256, (3, 3, 5, 4), dtype=torch.uint8)
    norm = Normalizer([0.1, 0.5, 0.9], [0.2, 0.3, 0.4])
    plain, cl = norm(x), norm(x, torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
    assert torch.equal(plain, cl)
    want = (x.float() / 255 - torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(plain, want, atol=1e-5)
