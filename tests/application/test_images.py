"""Preprocessing is torchvision's transforms, bit for bit, on non-square photos; images with NaN pixels are refused."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import ResNet50_Weights

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.images import ImageError, Preprocessing, open_image

SIZES = [(451, 300), (300, 451), (517, 333)]


def photo(path, size, seed=0):
    """A photo-like image: smooth colour ramps plus noise, so every resampling difference shows."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1, height)[:, None, None]
    array = np.clip(ramp + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("size", SIZES)
def test_paper_transform_bit_for_bit(tmp_path, size):
    path = photo(tmp_path / "photo.png", size)
    paper = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                transforms.Normalize(lrp.IMAGENET_MEAN, lrp.IMAGENET_STD)])
    with Image.open(path) as image:
        expected = paper(image.convert("RGB"))
    ours = Preprocessing()(open_image(path))
    assert ours.shape == (3, 224, 224) and torch.equal(ours, expected)


@pytest.mark.parametrize("weights", [ResNet50_Weights.IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V2])
def test_weights_transforms_bit_for_bit(tmp_path, weights):
    """torchvision weights bring their own resize (256 for V1, 232 for V2), crop and interpolation."""
    path = photo(tmp_path / "photo.png", SIZES[0], seed=1)
    with Image.open(path) as image:
        expected = weights.transforms()(image.convert("RGB"))
    ours = Preprocessing.from_transforms(weights.transforms())(open_image(path))
    assert torch.equal(ours, expected)


def test_non_finite_pixels_are_refused(tmp_path):
    array = np.full((8, 8), 0.5, np.float32)
    array[2, 3] = np.nan
    Image.fromarray(array, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match=r"nan.tif: .*NaN or infinite"):
        open_image(tmp_path / "nan.tif")
    array[2, 3] = 0.25
    Image.fromarray(array, mode="F").save(tmp_path / "finite.tif")
    assert open_image(tmp_path / "finite.tif").size == (8, 8)
