"""energy_cli.api: data in every accepted form -> ImageSets, Python values -> overrides, and evaluate's
metrics against a computation by hand."""

import numpy as np
import pytest
import torch
from PIL import Image

from energy_cli import api
from energy_cli.data.batches import Normalizer
from energy_cli.data.images import adapt
from energy_cli.errors import UserError
from energy_cli.models import build_model
from energy_cli.ood.metrics import auroc, fpr_at_tpr
from energy_cli.ood.scores import free_energy


def test_override_values():
    assert api.override_value(None) == "null"
    assert api.override_value(True) == "true" and api.override_value(False) == "false"
    assert api.override_value(-23) == "-23" and api.override_value(0.5) == "0.5"
    assert api.override_value(["gaussian", "uniform"]) == "[gaussian,uniform]"
    assert api.override_value("my folder/x") == "'my folder/x'"


def test_float_images_in_unit_range_become_the_same_bytes():
    pixels = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    as_float = pixels.float() / 255
    assert torch.equal(api.as_image_set(as_float, "x").images, pixels)
    assert torch.equal(api.as_image_set(pixels.numpy(), "x").images, pixels)


def test_grey_stacks_labels_and_resizing():
    grey = torch.randint(0, 256, (4, 10, 10), dtype=torch.uint8)
    got = api.as_image_set((grey, [0, 1, 2, 1]), "x", (1, 8, 8))
    assert torch.equal(got.images, adapt(grey[:, None], (1, 8, 8)))
    assert got.labels.tolist() == [0, 1, 2, 1]


def test_normalised_or_malformed_images_are_refused():
    with pytest.raises(UserError, match=r"pixels in \[0, 1\]"):
        api.as_image_set(torch.randn(3, 1, 8, 8), "x")
    with pytest.raises(UserError, match="N x C x H x W"):
        api.as_image_set(torch.zeros(8, 8), "x")
    with pytest.raises(UserError, match="2 labels for 3 images"):
        api.as_image_set((torch.zeros(3, 1, 8, 8), [0, 1]), "x")


def test_a_dataset_of_pil_images_with_labels():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(3)]

    class Pictures(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.fromarray(arrays[i]), i + 4

    got = api.as_image_set(Pictures(), "pics", (3, 8, 8))
    want = adapt(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), (3, 8, 8))
    assert torch.equal(got.images, want) and got.labels.tolist() == [4, 5, 6]


def test_a_folder_path(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert api.as_image_set(tmp_path, "folder", (1, 8, 8)).images.shape == (3, 1, 8, 8)
    with pytest.raises(UserError, match="image_size"):
        api.as_image_set(tmp_path, "folder")


def test_evaluate_matches_the_formulas_by_hand():
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 8}, 10, 1).eval()
    ids = torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (60,))
    noise = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    rows = api.evaluate(model, (ids, labels), {"noise": noise}, scores=("msp", "energy"), temperature=2.0,
                        mean=[0.3], std=[0.4], device="cpu", as_frame=False)
    assert [(r["score"], r["ood"]) for r in rows] == [("msp", "noise"), ("msp", "average"),
                                                      ("energy", "noise"), ("energy", "average")]
    norm = Normalizer([0.3], [0.4])
    with torch.no_grad():
        s_in, s_out = (-free_energy(model(norm(x)).double(), 2.0).numpy() for x in (ids, noise))
        acc = float((model(norm(ids)).argmax(1) == labels).float().mean())
    energy = rows[2]
    assert energy["fpr95"] == pytest.approx(100 * fpr_at_tpr(s_in, s_out), abs=1e-9)
    assert energy["auroc"] == pytest.approx(100 * auroc(s_in, s_out), abs=1e-9)
    assert energy["temperature"] == 2.0 and rows[0]["temperature"] == 1.0
    assert energy["n_id"] == 60 and energy["n_ood"] == 40 and energy["id_acc"] == pytest.approx(100 * acc)


def test_scores_that_fit_need_training_data():
    model = build_model({"name": "small_cnn", "width": 8}, 10, 1)
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="train_data"):
        api.evaluate(model, images, {"x": images}, scores=["mahalanobis"], device="cpu")


class _FakeFrame:
    """Stands in for pandas.DataFrame (pandas is not a dependency): records what it was built from."""

    def __init__(self, rows, columns):
        self.rows, self.columns = rows, list(columns)


def test_results_as_a_dataframe_with_pandas_and_as_rows_without(monkeypatch):
    import builtins
    import types

    model = build_model({"name": "small_cnn", "width": 8}, 10, 1).eval()
    ids, noise = torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.full((6, 1, 8, 8), 255, dtype=torch.uint8)

    def run(as_frame):
        return api.evaluate(model, ids, {"noise": noise}, scores=("energy",), mean=[0.3], std=[0.4], device="cpu",
                            as_frame=as_frame)

    rows = run(False)
    real_import = builtins.__import__

    def without_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as patch:                         # pandas missing: rows by default, one line if asked
        patch.setattr(builtins, "__import__", without_pandas)
        assert run(None) == rows
        with pytest.raises(UserError, match="as_frame=True needs pandas: pip install pandas"):
            run(True)
    fake = types.SimpleNamespace(DataFrame=_FakeFrame)
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: fake if name == "pandas" else real_import(name, *a, **k))
    frame = run(None)                                           # pandas there: one frame, columns in results order
    assert isinstance(frame, _FakeFrame) and frame.rows == rows
    assert frame.columns[:len(rows[0])] == list(rows[0]) and len(frame.columns) == len(rows[0])
