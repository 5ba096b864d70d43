"""Preprocessing is torchvision's transforms, bit for bit, on non-square photos; images with NaN pixels are refused."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import ResNet50_Weights

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.images import ImageError, Preprocessing, open_image, read_image

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


def test_sixteen_bit_images_equal_their_eight_bit_counterparts(tmp_path):
    """A 16-bit grayscale PNG is scaled by 65535 as an 8-bit one is by 255: the same digit within 1/255, resized or
    not; not clipped at 255."""
    rng = np.random.default_rng(3)
    eight = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    noise = rng.integers(0, 65536, (40, 30)).astype(np.uint16)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    for prep in (Preprocessing(resize=0, crop=0, mean=(0.0,), std=(1.0,), channels=1),
                 Preprocessing(resize=28, crop=28, mean=(0.0,), std=(1.0,), channels=1),
                 Preprocessing(resize=28, crop=28)):
        low, high = prep(open_image(tmp_path / "eight.png")), prep(open_image(tmp_path / "sixteen.png"))
        assert low.shape == high.shape
        assert float((low - high).abs().max()) <= 1 / 255 / min(prep.std) + 1e-6
    pixels = Preprocessing(resize=0, crop=0, channels=1).pixels(open_image(tmp_path / "noise.png"))
    torch.testing.assert_close(pixels[0].double(), torch.from_numpy(noise / 65535.0), rtol=0, atol=1e-6)
    assert float(pixels.max()) <= 1.0 and float(pixels.std()) > 0.2  # the noise, not a white blob


def test_changes_on_reading_are_noted(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 40)).save(tmp_path / "alpha.png")
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(tmp_path / "print.jpg")
    frames = [Image.new("RGB", (8, 8), (80 * index, 0, 0)) for index in range(3)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "plain.png")
    assert read_image(tmp_path / "alpha.png")[1] == ["its alpha channel dropped"]
    assert read_image(tmp_path / "print.jpg")[1] == ["converted from CMYK to RGB"]
    image, notes = read_image(tmp_path / "moving.gif")
    assert notes == ["the first of its 3 frames"] and image.mode == "RGB"
    assert read_image(tmp_path / "plain.png")[1] == []
