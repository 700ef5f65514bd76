import numpy as np
import torch
from PIL import Image

from energy_cli.data.files import (
    decode_image,
    expand_paths,
    list_images,
    load_image_files,
)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_list_and_decode_any_size_rgb_or_grey(tmp_path):
    write(tmp_path / "a" / "wide.png", np.full((20, 40, 3), (200, 0, 0), dtype=np.uint8))   # red, 40x20
    write(tmp_path / "b.jpg", np.full((10, 10), 90, dtype=np.uint8))                       # grey JPEG
    (tmp_path / "notes.txt").write_text("not an image")
    files = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/wide.png", "b.jpg"]   # sorted paths
    red = decode_image(tmp_path / "a" / "wide.png", (3, 8, 8))
    assert red.shape == (3, 8, 8) and red.dtype == torch.uint8
    assert red[0].min() == 200 and red[1].max() == 0
    grey = decode_image(tmp_path / "a" / "wide.png", (1, 8, 8))
    assert int(grey.float().mean().round()) == round(0.299 * 200)
    up = decode_image(tmp_path / "b.jpg", (3, 32, 32))
    assert up.shape == (3, 32, 32) and abs(int(up.float().mean()) - 90) <= 2


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    write(tmp_path / "ok.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    images, ok, failed = load_image_files(expand_paths([tmp_path]), (1, 8, 8))
    assert len(images) == 1 and [p.name for p in ok] == ["ok.png"]
    assert [p.name for p, _ in failed] == ["broken.png"] and failed[0][1]
    empty, _, _ = load_image_files([], (3, 4, 4))
    assert empty.images.shape == (0, 3, 4, 4)
