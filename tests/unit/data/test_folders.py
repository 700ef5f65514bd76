"""Folder image sets: decoding to the ID shape and the on-disk cache that spares a second decode."""

import os

import minidata
import numpy as np
import pytest
import torch
from PIL import Image

from energy_cli.data import files, folders
from energy_cli.data.images import resize_images
from energy_cli.errors import UserError


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts calls of files.decode_image (the JPEG/PNG decoder) while delegating to it."""
    calls = []
    real = files.decode_image

    def counting(path, shape):
        calls.append(path)
        return real(path, shape)

    monkeypatch.setattr(files, "decode_image", counting)
    return calls


def test_folder_is_resized_and_centre_cropped_in_file_order(tmp_path):
    root = tmp_path / "imgs"
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (0, 200, 0)                                         # a green centre band, 20 wide
    (root / "a").mkdir(parents=True)
    Image.fromarray(wide).save(root / "a" / "wide.png")
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(root / "b.png")  # grey
    s = folders.load_folder(root, "mine", (3, 10, 10), cache_dir=None)
    assert s.images.shape == (2, 3, 10, 10) and s.name == "mine"
    assert s.images[0, 1].min() == 200 and s.images[0, 0].max() == 0   # the crop keeps only the green band
    assert torch.equal(s.images[1], torch.full((3, 10, 10), 90, dtype=torch.uint8))
    grey = folders.load_folder(root, "mine", (1, 10, 10), cache_dir=None)
    assert grey.images.shape == (2, 1, 10, 10) and int(grey.images[0].max()) == round(0.587 * 200)
    direct = resize_images(torch.from_numpy(wide).permute(2, 0, 1)[None], 10)[0]
    assert torch.equal(s.images[0], direct)


def test_second_load_reads_the_cache_without_decoding(tmp_path, count_decodes):
    written = minidata.write_images(tmp_path / "dtd" / "images" / "x", 7, (50, 40), seed=1)
    cache = tmp_path / "cache"
    first = folders.load_folder(tmp_path / "dtd" / "images", "textures", (3, 32, 32), cache)
    assert len(count_decodes) == 7
    [cached] = list(cache.glob("textures-3x32x32-*.npy"))
    again = folders.load_folder(tmp_path / "dtd" / "images", "textures", (3, 32, 32), cache)
    assert len(count_decodes) == 7 and torch.equal(first.images, again.images)
    assert np.array_equal(np.load(cached), first.images.numpy())
    # another shape is another cache entry
    folders.load_folder(tmp_path / "dtd" / "images", "textures", (1, 8, 8), cache)
    assert len(count_decodes) == 14 and len(list(cache.glob("textures-*.npy"))) == 2
    # a changed file list (one removed) decodes afresh
    written[0].unlink()
    fewer = folders.load_folder(tmp_path / "dtd" / "images", "textures", (3, 32, 32), cache)
    assert len(fewer) == 6 and len(count_decodes) == 20
    # a changed file (same name, new content) decodes afresh too
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(written[1])
    os.utime(written[1], ns=(1, 1))
    changed = folders.load_folder(tmp_path / "dtd" / "images", "textures", (3, 32, 32), cache)
    assert len(count_decodes) == 26 and int(changed.images[0].max()) == 0


def test_damaged_cache_file_is_decoded_again(tmp_path, count_decodes):
    minidata.write_images(tmp_path / "f", 3, (32, 32), seed=2)
    folders.load_folder(tmp_path / "f", "f", (3, 32, 32), tmp_path / "c")
    [cached] = list((tmp_path / "c").glob("*.npy"))
    cached.write_bytes(cached.read_bytes()[:100])
    s = folders.load_folder(tmp_path / "f", "f", (3, 32, 32), tmp_path / "c")
    assert len(s) == 3 and len(count_decodes) == 6
    assert np.load(cached).shape == (3, 3, 32, 32)                     # rewritten whole


def test_unwritable_cache_only_warns(tmp_path, caplog):
    minidata.write_images(tmp_path / "f", 2, (32, 32), seed=3)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    s = folders.load_folder(tmp_path / "f", "f", (3, 32, 32), blocker)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(s) == 2 and len(warnings) == 1 and "could not write the image cache" in warnings[0]


def test_broken_files_are_skipped_with_a_warning(tmp_path, caplog):
    minidata.write_images(tmp_path / "f", 3, (32, 32), seed=4)
    (tmp_path / "f" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    s = folders.load_folder(tmp_path / "f", "f", (3, 32, 32), None)
    assert len(s) == 3
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "skipped 1 of 4 files" in warning and "zz_broken.jpg" in warning


@pytest.mark.parametrize("setup,message", [
    ("missing", "folder {root} not found"),
    ("empty", "no image files"),
    ("broken", "none of the 1 image files under {root} could be read"),
])
def test_unusable_folder_is_one_line(tmp_path, setup, message):
    root = tmp_path / "f"
    if setup != "missing":
        root.mkdir()
        (root / "readme.txt").write_text("no images here")
    if setup == "broken":
        (root / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError) as info:
        folders.load_folder(root, "f", (3, 32, 32), None, what="get it from X")
    text = str(info.value)
    assert message.format(root=root) in text and text.endswith("get it from X") and "\n" not in text
