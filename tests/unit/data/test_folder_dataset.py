"""dataset=folder: reading an ImageFolder tree (classes, labels, layout errors), the measured normalisation,
the stream=auto decision, and the streamed set (LazyImages) giving exactly the in-memory images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from folderdata import CLASSES, make_folder, write_png

from energy_cli.data import class_count, folder_dataset, folders, normalizer_stats, streams
from energy_cli.data.images import ImageSet
from energy_cli.data.settings import DataSettings
from energy_cli.data.validation import synthetic_validation_sets
from energy_cli.errors import UserError

SHAPE = (3, 16, 16)


def config(path, cache_dir=None, **dataset) -> DataSettings:
    d = {"name": "folder", "path": str(path), "num_classes": "auto", "channels": 3, "image_size": 16,
         "mean": "auto", "std": "auto", "stream": "auto", "workers": 0, **dataset}
    return DataSettings(dataset=d, cache_dir=cache_dir, device="cpu")


def load(settings: DataSettings):
    return folder_dataset.load(settings.dataset, settings.cache_dir, settings.progress)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder") / "data")


def test_classes_are_sorted_folder_names_and_labels_their_index(tree):
    data = folder_dataset.scan(tree)
    assert data.classes == sorted(CLASSES)
    assert len(data.train.paths) == 18 and len(data.test.paths) == 6
    for split in (data.train, data.test):
        for path, label in zip(split.paths, split.labels):
            assert path.relative_to(split.root).parts[0] == data.classes[label]
    assert any("deeper" in p.parts for p in data.train.paths)   # any depth under the class folder


def test_test_may_hold_a_subset_of_the_training_classes(tmp_path):
    root = make_folder(tmp_path / "d")
    for p in (root / "test" / "cat").iterdir():
        p.unlink()
    (root / "test" / "cat").rmdir()
    data = folder_dataset.scan(root)
    assert set(data.test.labels) == {1, 2}   # dog, emu keep their training labels


def test_class_count_counts_the_class_folders(tree):
    assert class_count(config(tree).dataset) == 3
    assert class_count(config(tree, num_classes=3).dataset) == 3
    with pytest.raises(UserError, match="holds 3 class folders"):
        class_count(config(tree, num_classes=5).dataset)
    assert class_count({"name": "digits", "num_classes": 10}) == 10
    with pytest.raises(UserError, match="only dataset=folder counts its classes"):
        class_count({"name": "digits", "num_classes": "auto"})


def _break(kind, root):
    if kind == "missing":
        return root / "nope"
    if kind == "file":
        root.mkdir(parents=True)
        (root / "f.txt").write_text("x")
        return root / "f.txt"
    make_folder(root, n_train=2, n_test=1)
    if kind == "no_test":
        import shutil
        shutil.rmtree(root / "test")
    elif kind == "one_class":
        import shutil
        for name in CLASSES[1:]:
            shutil.rmtree(root / "train" / name)
    elif kind == "empty_class":
        for p in (root / "train" / "dog").rglob("*.png"):
            p.unlink()
    elif kind == "empty_test":
        import shutil
        shutil.rmtree(root / "test")
        (root / "test").mkdir()
    elif kind == "unknown_test_class":
        write_png(root / "test" / "yak" / "0.png", np.zeros((8, 8, 3), np.uint8))
    elif kind == "undecodable":
        for p in root.rglob("*.png"):
            p.write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("kind,message", [
    ("missing", "no such folder"), ("file", "not a folder"), ("no_test", "has no test/ folder"),
    ("one_class", "one class folder"), ("empty_class", "holds no image files"),
    ("empty_test", "test/ holds no class folders"), ("unknown_test_class", "test/ has class 'yak'"),
    ("undecodable", "cannot read the image file"),
])
def test_layout_mistakes_are_one_line_user_errors(tmp_path, kind, message):
    path = _break(kind, tmp_path / "d")
    with pytest.raises(UserError, match=message) as info:
        folder_dataset.scan(path)
    assert "\n" not in str(info.value)


def test_a_missing_path_asks_for_it():
    with pytest.raises(UserError, match="add dataset.path=DIR"):
        folder_dataset.scan(None)


def test_an_unreadable_file_among_good_ones_is_an_error_in_memory(tmp_path):
    root = make_folder(tmp_path / "d", n_train=3, n_test=1)
    (root / "train" / "dog" / "001.png").write_bytes(b"broken")
    with pytest.raises(UserError, match="1 of 9 files"):
        load(config(root, stream=False))
    train, _ = load(config(root, stream=True))
    with pytest.raises(UserError, match="001.png"):
        train.images.load()


def test_streamed_and_in_memory_sets_hold_the_same_images_and_labels(tree):
    mem_train, mem_test = load(config(tree, stream=False))
    lazy_train, lazy_test = load(config(tree, stream=True))
    assert not mem_train.streamed and lazy_train.streamed
    for mem, lazy in ((mem_train, lazy_train), (mem_test, lazy_test)):
        assert lazy.images.shape == mem.images.shape and lazy.shape == mem.shape
        assert torch.equal(lazy.images.load(), mem.images)
        assert torch.equal(lazy.labels, mem.labels)
    chunks = [[5, 0, 17], [3], [9, 9, 1, 12]]
    got = list(lazy_train.images.batches(chunks))
    assert all(torch.equal(g, mem_train.images[c]) for g, c in zip(got, chunks))
    index = torch.tensor([4, 2, 11])
    sub = lazy_train.subset(index)
    assert sub.streamed and torch.equal(sub.images.load(), mem_train.images[index])
    assert torch.equal(sub.labels, mem_train.labels[index])


def test_workers_decode_the_same_images(tree):
    mem, _ = load(config(tree, stream=False))
    lazy, _ = load(config(tree, stream=True, workers=2))
    assert lazy.images.workers == 2
    assert torch.equal(torch.cat(list(lazy.images.range_batches(5))), mem.images)


def test_streaming_leaves_the_global_rng_alone(tree):
    lazy, _ = load(config(tree, stream=True))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    lazy.images.load()
    assert torch.equal(torch.rand(3), expected)


def test_in_memory_sets_are_cached(tree, tmp_path, monkeypatch):
    cfg = config(tree, stream=False, cache_dir=str(tmp_path / "cache"))
    first, _ = load(cfg)
    assert len(list((tmp_path / "cache").glob("dataset-data-train-3x16x16-*.npy"))) == 1
    monkeypatch.setattr(folders, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    again, _ = load(cfg)
    assert torch.equal(again.images, first.images)


def numpy_stats(images: np.ndarray):
    x = images.astype(np.float64) / 255
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def test_measured_mean_and_std_match_numpy(tree):
    mem, _ = load(config(tree, stream=False))
    lazy, _ = load(config(tree, stream=True))
    want_mean, want_std = numpy_stats(mem.images.numpy())
    for images in (mem.images, lazy.images):
        mean, std = streams.channel_stats(images, seed=0)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
        np.testing.assert_allclose(std, want_std, rtol=1e-9)
    mean, std, how = normalizer_stats(config(tree), lazy)
    assert how.startswith("measured") and np.allclose(mean, want_mean)
    given = normalizer_stats(config(tree, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]), lazy)
    assert given == ([0.5] * 3, [0.25] * 3, "given")


def test_stats_of_a_large_set_use_a_seeded_subset_the_same_on_both_paths(tree):
    mem, _ = load(config(tree, stream=False))
    lazy, _ = load(config(tree, stream=True))
    a = streams.channel_stats(mem.images, seed=7, limit=5)
    b = streams.channel_stats(lazy.images, seed=7, limit=5)
    assert a == b
    index = torch.randperm(len(mem), generator=torch.Generator().manual_seed(7))[:5]
    np.testing.assert_allclose(a[0], numpy_stats(mem.images[index].numpy())[0], rtol=1e-12)


def test_stream_auto_decides_by_the_share_of_available_memory(tree, monkeypatch, caplog):
    assert streams.choose_stream("auto", 600, 1000)[0] is True
    assert streams.choose_stream("auto", 400, 1000)[0] is False
    assert streams.choose_stream(True, 1, 1000)[0] is True and streams.choose_stream(False, 10**9, 1)[0] is False
    n_bytes = 24 * 3 * 16 * 16
    caplog.set_level("INFO")
    monkeypatch.setattr(folder_dataset, "available_memory", lambda device=None: (n_bytes, "host memory available"))
    train, _ = load(config(tree))
    assert train.streamed and "streaming from disk (stream=auto" in caplog.text
    monkeypatch.setattr(folder_dataset, "available_memory", lambda device=None: (3 * n_bytes, "host memory available"))
    train, _ = load(config(tree))
    assert not train.streamed


def test_available_memory_reads_a_positive_figure():
    nbytes, where = streams.available_memory()
    assert nbytes > 0 and where


def test_fingerprint_follows_the_files(tmp_path):
    root = make_folder(tmp_path / "d", n_train=2, n_test=1)
    lazy, _ = load(config(root, stream=True))
    before = lazy.images.fingerprint()
    assert load(config(root, stream=True))[0].images.fingerprint() == before
    p = lazy.images.paths[0]
    os.utime(p, ns=(0, 12345))
    assert lazy.images.fingerprint() != before


def test_synthetic_validation_sets_from_a_streamed_set_equal_the_in_memory_ones(tree):
    mem, _ = load(config(tree, stream=False))
    lazy, _ = load(config(tree, stream=True))
    for a, b in zip(synthetic_validation_sets(mem, 7, 1), synthetic_validation_sets(lazy, 7, 1)):
        assert a.name == b.name and torch.equal(a.images, b.images)


def test_inference_takes_a_streamed_set(tree):
    from energy_cli.data.batches import Normalizer
    from energy_cli.detectors import build_detectors
    from energy_cli.detectors.scoring import score_images
    from energy_cli.engine.inference import predict
    from energy_cli.engine.runtime import Runtime
    from energy_cli.models import build_model

    mem, _ = load(config(tree, stream=False))
    lazy, _ = load(config(tree, stream=True))
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 8, "dropout": 0.0}, 3, 3).eval()
    norm, runtime = Normalizer([0.5] * 3, [0.25] * 3), Runtime(torch.device("cpu"), None)
    a, fa = predict(model, mem.images, norm, runtime, 5, features=True)
    b, fb = predict(model, lazy.images, norm, runtime, 5, features=True)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    dets = build_detectors(["energy", "msp"], model, norm, runtime, temperature=1.0, odin_temperature=1000.0,
                           odin_noise=0.0, mahalanobis_noise=0.0, batch_size=5, options={})
    la, sa = score_images(model, mem.images, dets, norm, runtime, 5)
    lb, sb = score_images(model, lazy.images, dets, norm, runtime, 5)
    assert torch.equal(la, lb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_imageset_takes_a_lazy_set():
    lazy = streams.LazyImages([], SHAPE)
    s = ImageSet("x", lazy)   # type: ignore[arg-type]
    assert s.streamed and len(s) == 0 and s.shape == SHAPE and lazy.load().shape == (0, *SHAPE)


def test_resume_search_composes_the_counted_classes(tree):
    """resume=true compares the composed config with the checkpoints' configs, which hold the counted classes."""
    from energy_cli.runs.resume import composed_config

    assert composed_config("train", ["dataset=folder", f"dataset.path={tree}"])["dataset"]["num_classes"] == 3
