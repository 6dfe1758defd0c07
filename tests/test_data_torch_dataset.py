"""ImageDataset returns BadSample instead of raising; collate_with_bad separates good from bad."""

from __future__ import annotations

import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from fgcli.data.index import DatasetSplit, Sample  # noqa: E402
from fgcli.data.preprocess import PreprocessConfig  # noqa: E402
from fgcli.data.torch_dataset import BadSample, ImageDataset, collate_with_bad  # noqa: E402
from fgcli.data.transforms import eval_transform, train_transform  # noqa: E402


@pytest.fixture
def split(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (30, 60), (0, 0, 255)).save(tmp_path / "blue.png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    samples = [Sample(str(tmp_path / "red.png"), 0), Sample(str(tmp_path / "zero.jpg"), 1),
               Sample(str(tmp_path / "blue.png"), 1, bottom_crop=20)]
    return DatasetSplit(tmp_path, "folder", "train", ["red", "blue"], samples)


def test_bad_images_travel_as_bad_samples(split):
    cfg = PreprocessConfig(img_size=24, resize_size=28, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dataset = ImageDataset(split, eval_transform(cfg))
    assert len(dataset) == 3
    bad = dataset[1]
    assert isinstance(bad, BadSample) and bad.index == 1 and bad.path.endswith("zero.jpg")
    assert "empty" in bad.reason
    images, labels, indices, bad_items = collate_with_bad([dataset[i] for i in range(3)])
    assert images.shape == (2, 3, 24, 24) and labels.tolist() == [0, 1] and indices == [0, 2]
    assert [b.index for b in bad_items] == [1]
    assert images[0, 0].min().item() == 1.0 and images[1, 2].min().item() == 1.0  # red, blue (banner cut first)


def test_all_bad_batch_is_empty_not_an_error(split):
    dataset = ImageDataset(split, eval_transform(PreprocessConfig(24, 28)))
    images, labels, indices, bad = collate_with_bad([dataset[1], dataset[1]])
    assert images.numel() == 0 and labels.tolist() == [] and indices == [] and len(bad) == 2


def test_train_transform_crops_and_flips(split):
    torch.manual_seed(0)
    transform = train_transform(PreprocessConfig(img_size=24, resize_size=28))
    shapes = {tuple(transform(Image.open(split.samples[0].path)).shape) for _ in range(4)}
    assert shapes == {(3, 24, 24)}
    ramp = Image.linear_gradient("L").resize((28, 28)).convert("RGB")
    firsts = {round(transform(ramp)[0, 0, 0].item(), 4) for _ in range(20)}
    assert len(firsts) > 1  # random crop / flip changes which pixels land at the corner
