"""The public-format readers (CIFAR pickles, SVHN .mat, .npy images), where datasets are looked for, and
download=true / download=false, on miniature files written in the real formats."""

import os
import pickle
import urllib.request
from pathlib import Path

import minidata
import numpy as np
import pytest
import torch

from energy_cli.data import catalog, cifar, svhn, tinyimages
from energy_cli.errors import UserError


def test_cifar10_reads_python2_batches_exactly(tmp_path):
    want = minidata.write_cifar10(tmp_path)
    raw = (tmp_path / "cifar10/cifar-10-batches-py/data_batch_1").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and raw[:3] == b"\x80\x02}"   # Python 2 + numpy 1 layout
    train, test = cifar.load_cifar("cifar10", tmp_path)
    assert train.images.dtype == torch.uint8 and train.shape == (3, 32, 32)
    assert (len(train), len(test)) == (100, 40)
    assert np.array_equal(train.images.numpy(), want["x_train"]) and np.array_equal(test.images.numpy(), want["x_test"])
    assert np.array_equal(train.labels.numpy(), want["y_train"]) and np.array_equal(test.labels.numpy(), want["y_test"])


def test_cifar_rows_are_rgb_planes(tmp_path):
    """A row of `data` is 1024 red, then 1024 green, then 1024 blue values, each plane row-major."""
    folder = tmp_path / "cifar10/cifar-10-batches-py"
    folder.mkdir(parents=True)
    row = np.zeros(3072, np.uint8)
    row[0] = 11           # red, pixel (0, 0)
    row[1024 + 33] = 22   # green, pixel (1, 1)
    row[2048 + 1023] = 33  # blue, pixel (31, 31)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(minidata.py2_pickle({"data": row[None], "labels": [3]}))
    _, test = cifar.load_cifar("cifar10", tmp_path)
    x = test.images[0]
    assert (int(x[0, 0, 0]), int(x[1, 1, 1]), int(x[2, 31, 31])) == (11, 22, 33) and int(x.sum()) == 66
    assert test.labels.tolist() == [3]


def test_cifar100_uses_the_fine_labels(tmp_path):
    want = minidata.write_cifar100(tmp_path)
    train, test = cifar.load_cifar("cifar100", tmp_path)
    assert np.array_equal(test.images.numpy(), want["x_test"]) and np.array_equal(train.labels.numpy(), want["y_train"])
    assert int(train.labels.max()) > 19   # fine (0..99), not coarse (0..19) labels


def test_cifar_batches_pickled_by_python3_also_read(tmp_path):
    minidata.write_cifar10(tmp_path)
    x = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "cifar10/cifar-10-batches-py/test_batch"
    path.write_bytes(pickle.dumps({b"data": x, b"labels": [1, 2]}, protocol=4))
    _, test = cifar.load_cifar("cifar10", tmp_path)
    assert np.array_equal(test.images.numpy().reshape(2, 3072), x) and test.labels.tolist() == [1, 2]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "is not a readable CIFAR batch (UnpicklingError: pickle data was truncated)"),
    (lambda b: b"", "is not a readable CIFAR batch (EOFError"),
    (lambda b: pickle.dumps(_RunsCode(), protocol=2), "which no CIFAR batch holds"),
    (lambda b: pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}), "expected 'data' as N x 3072"),
    (lambda b: pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "2 images but 1 'labels'"),
    (lambda b: pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [12]}), "labels must lie in 0..9"),
    (lambda b: pickle.dumps([1, 2, 3]), "expected 'data' as N x 3072 uint8, got NoneType"),
])
def test_damaged_cifar_batch_is_one_clear_line(tmp_path, damage, message):
    minidata.write_cifar10(tmp_path)
    path = tmp_path / "cifar10/cifar-10-batches-py/data_batch_2"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError) as info:
        cifar.load_cifar("cifar10", tmp_path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in text


def test_missing_cifar_file_names_it(tmp_path):
    minidata.write_cifar10(tmp_path)
    (tmp_path / "cifar10/cifar-10-batches-py/test_batch").unlink()
    with pytest.raises(UserError, match="test_batch is missing"):
        cifar.load_cifar("cifar10", tmp_path)


def test_svhn_mat_layout_and_labels(tmp_path):
    want = minidata.write_svhn(tmp_path, n=12)
    s = svhn.load_svhn_test(tmp_path)
    assert s.shape == (3, 32, 32) and np.array_equal(s.images.numpy(), want) and s.labels is None
    _, labels = svhn.read_svhn_mat(tmp_path / "svhn/test_32x32.mat", labels=True)
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]   # label 10 is the digit 0


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "is not a readable SVHN .mat file"),
    (lambda b: b[:40], "is not a readable SVHN .mat file"),
    (lambda b: b"", "is not a readable SVHN .mat file"),
    (None, "expected 'X' of shape H x W x 3 x N, got (32, 32, 3)"),
])
def test_damaged_svhn_is_one_clear_line(tmp_path, damage, message):
    from scipy.io import savemat

    minidata.write_svhn(tmp_path, n=5)
    path = tmp_path / "svhn/test_32x32.mat"
    if damage is None:
        savemat(path, {"X": np.zeros((32, 32, 3), np.uint8)})
    else:
        path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError) as info:
        svhn.load_svhn_test(tmp_path)
    assert message in str(info.value) and "http://ufldl.stanford.edu/housenumbers/test_32x32.mat" in str(info.value)
    assert "\n" not in str(info.value)


def test_npy_images_are_memory_mapped_nchw_views(tmp_path):
    want = minidata.write_tinyimages(tmp_path, n=10)
    s = tinyimages.load_npy_images(tmp_path / "300K_random_images.npy", "tinyimages300k")
    assert s.images.shape == (10, 3, 32, 32) and s.images.dtype == torch.uint8
    assert np.array_equal(s.images.permute(0, 2, 3, 1).numpy(), want)
    assert not s.images.is_contiguous()            # a permuted view of the map, nothing copied
    grey = tmp_path / "grey.npy"
    np.save(grey, np.full((3, 8, 8), 7, np.uint8))
    assert tinyimages.load_npy_images(grey, "g").images.shape == (3, 1, 8, 8)
    before = (tmp_path / "300K_random_images.npy").read_bytes()
    s.images[0].zero_()                             # copy-on-write: the file is never changed
    assert (tmp_path / "300K_random_images.npy").read_bytes() == before


@pytest.mark.parametrize("content,message", [
    ("truncated", "mmap length is greater than file size"),
    ("header", "is not a readable .npy file"),
    ("float", "holds float32 (2, 32, 32, 3); expected uint8 images"),
    ("objects", "is not a readable .npy file"),
    ("channels", "holds uint8 (2, 32, 32, 5)"),
])
def test_damaged_npy_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "x.npy"
    if content in ("truncated", "header"):
        np.save(path, np.zeros((50, 32, 32, 3), np.uint8))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if content == "truncated" else data[:30])
    elif content == "float":
        np.save(path, np.zeros((2, 32, 32, 3), np.float32))
    elif content == "objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(path, np.zeros((2, 32, 32, 5), np.uint8))
    with pytest.raises(UserError) as info:
        tinyimages.load_npy_images(path, "npy", hint="get it from X")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_dataset_message_names_path_and_address(tmp_path):
    with pytest.raises(UserError) as info:
        catalog.locate("lsun_r", tmp_path / "data")
    text = str(info.value)
    assert f"LSUN-Resize not found at {tmp_path / 'data' / 'LSUN_resize'}" in text
    assert "https://www.dropbox.com/s/moqh2wh8696c3yl/LSUN_resize.tar.gz" in text and "download=true" not in text
    with pytest.raises(UserError, match=r"add download=true"):
        catalog.locate("svhn", tmp_path)
    (tmp_path / "LSUN_resize").mkdir()                  # an empty folder counts as missing
    with pytest.raises(UserError, match="not found"):
        catalog.locate("lsun_r", tmp_path)


@pytest.fixture
def no_network(monkeypatch):
    """Every way torchvision could fetch something raises; returns the list of attempts."""
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tvu

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append((args, kwargs))
        raise AssertionError("the network must not be touched")

    for name in ("CIFAR10", "CIFAR100", "SVHN", "DTD"):
        monkeypatch.setattr(tvd, name, refuse)
    monkeypatch.setattr(tvu, "download_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@pytest.mark.parametrize("key", ["cifar10", "cifar100", "svhn", "textures", "lsun_c", "tinyimages300k"])
def test_download_false_never_touches_the_network(tmp_path, no_network, key):
    with pytest.raises(UserError, match="not found"):
        catalog.locate(key, tmp_path, download=False)
    assert no_network == []


def test_download_true_fetches_with_torchvision_into_the_public_layout(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def fake(kind):
        def make(root, download=False, **kwargs):
            calls.append((kind, Path(root), download, kwargs))
            if kind == "CIFAR10":
                minidata.write_cifar10(Path(root).parent)     # root is <data_root>/cifar10
            elif kind == "SVHN":
                minidata.write_svhn(Path(root).parent, n=4)
            elif kind == "DTD":                                # torchvision unpacks to <root>/dtd/dtd/images
                minidata.write_images(Path(root) / "dtd" / "dtd" / "images" / "banded", 3, (40, 30), seed=0)
        return make

    for kind in ("CIFAR10", "SVHN", "DTD"):
        monkeypatch.setattr(tvd, kind, fake(kind))
    train, _ = cifar.load_cifar("cifar10", tmp_path, download=True)
    assert len(train) == 100 and calls[0][:3] == ("CIFAR10", tmp_path / "cifar10", True)
    assert len(svhn.load_svhn_test(tmp_path, download=True)) == 4
    assert calls[1][0] == "SVHN" and calls[1][3] == {"split": "test"}
    path = catalog.locate("textures", tmp_path, download=True)
    assert path == tmp_path / "dtd" / "images" and len(list(path.rglob("*.jpg"))) == 3
    assert not (tmp_path / ".dtd-download").exists()
    catalog.locate("cifar10", tmp_path, download=True)         # present now: no second fetch
    assert len(calls) == 3


def test_failed_download_is_one_line_with_the_address(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR100", offline)
    with pytest.raises(UserError) as info:
        cifar.load_cifar("cifar100", tmp_path, download=True)
    text = str(info.value)
    assert "downloading CIFAR-100 failed (OSError: [Errno -3]" in text and "cifar-100-python.tar.gz" in text
