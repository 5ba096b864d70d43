"""Preprocessing is torchvision's transforms, bit for bit, on non-square photos; images with NaN pixels are refused;
large photos are decoded reduced, to nearly the same model input, in bounded memory; images beyond the pixel limit
and any failure to read fail by the file's name."""
import json
import os
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms
from torchvision.models import ResNet50_Weights

import zennit_resnet_lrp as lrp
from helpers import flat_png
from zennit_resnet_lrp.application.images import (DEFAULT_MAX_PIXELS, ImageError, Preprocessing, open_image,
                                                   read_image)

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


def _segment(marker, payload):
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def flat_jpeg(path, width, height):
    """A baseline grey RGB JPEG of any size without the memory to encode one: written marker by marker, each 8x8
    block coded as DC difference 0 and end-of-block, one-bit codes of one-code Huffman tables, so the scan is zeros."""
    table = bytes([1] + [0] * 15 + [0])  # one code, of length 1, for symbol 0
    components = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    header = (b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64)) + _segment(0xC0, components)
              + _segment(0xC4, b"\x00" + table + b"\x10" + table)
              + _segment(0xDA, b"\x03" + b"".join(bytes([i, 0]) for i in (1, 2, 3)) + b"\x00\x3f\x00"))
    bits = 2 * 3 * -(-width // 8) * -(-height // 8)
    path.write_bytes(header + bytes(bits // 8) + (bytes([0xFF >> bits % 8]) if bits % 8 else b"") + b"\xff\xd9")
    return path


def test_image_beyond_the_pixel_limit_is_refused_by_name_from_its_header(tmp_path):
    """PIL refuses a 14000x14000 image with a DecompressionBombError that names no file; read_image refuses it by
    name and size, before decoding, and leaves PIL's own limit as it was."""
    limit = Image.MAX_IMAGE_PIXELS
    path = flat_png(tmp_path / "bomb.png", 14000, 14000)
    with pytest.raises(ImageError, match=r"bomb.png: 14000x14000 pixels \(196 megapixels\) is more than the limit "
                                         rf"of {DEFAULT_MAX_PIXELS} pixels \(--max-pixels\)"):
        read_image(path, Preprocessing().decode_side)
    with pytest.raises(ImageError, match=r"bomb.png: 14000x14000 .* limit of 1000 pixels"):
        read_image(path, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == limit
    assert read_image(flat_png(tmp_path / "small.png", 40, 25), max_pixels=1000)[0].size == (40, 25)


@pytest.mark.parametrize("error", [MemoryError(), Image.DecompressionBombError("Image size exceeds limit"),
                                   RuntimeError("decoder crashed")], ids=lambda error: type(error).__name__)
def test_any_failure_reading_a_file_is_that_files_image_error(tmp_path, monkeypatch, error):
    """Not only OSError and ValueError: whatever decoding raises becomes an ImageError naming the file."""
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(path)

    def fail(self):
        raise error
    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(ImageError, match=rf"^{path}: not a readable image \({type(error).__name__}"):
        read_image(path)


def test_large_jpeg_is_decoded_reduced_without_pils_warning(tmp_path):
    """A 20000x20000 JPEG, beyond PIL's limit and the default one, decodes at 1/8 (to what the limit counts), then
    is halved to 1250x1250, no less than the 1024 pixels the preprocessing asks for; PIL does not warn."""
    path = flat_jpeg(tmp_path / "huge.jpg", 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, notes = read_image(path, Preprocessing().decode_side)
    assert (image.size, image.mode, notes) == ((1250, 1250), "RGB", [])
    assert image.getextrema() == ((128, 128),) * 3


def test_decode_side_follows_the_resize():
    assert Preprocessing().decode_side == 1024  # the heatmaps' photo stays legible
    assert Preprocessing(resize=600, crop=512).decode_side == 1200  # twice the resize
    assert Preprocessing(resize=0, crop=224).decode_side == 0  # the crop takes the photo's own pixels


@pytest.mark.parametrize("suffix", ["png", "jpg"])
@pytest.mark.parametrize("size", [(1000, 700), (517, 1203)])
def test_reduced_decoding_gives_nearly_the_full_size_input(tmp_path, suffix, size):
    """Decoded reduced to twice the resize (the least ``decode_side`` keeps; by 5 for a PNG, by 4 through JPEG's
    DCT scaling), a noisy photo gives the model input of the full-size path to within 2/255 on average and 12/255
    at any pixel, and keeps its aspect ratio to within a pixel."""
    path = photo(tmp_path / f"photo.{suffix}", size)
    for prep in (Preprocessing(resize=64, crop=56), Preprocessing(resize=128, crop=112)):
        reduced = read_image(path, 2 * prep.resize)[0]
        assert 2 * prep.resize <= min(reduced.size) <= (min(size) + 1) // 2  # reduced by 2 at least
        assert abs(reduced.size[0] / reduced.size[1] - size[0] / size[1]) <= 1 / min(reduced.size)
        difference = (prep.pixels(reduced) - prep.pixels(read_image(path)[0])).abs()
        assert float(difference.mean()) <= 2 / 255 and float(difference.max()) <= 12 / 255


def test_progressive_jpeg_counts_its_full_size(tmp_path):
    """The pixel limit counts what is decoded: a baseline JPEG decoded at 1/4 (100x75) is within 20000 pixels, a
    progressive one is not (its decoder holds every coefficient), nor is the baseline one at full size."""
    image = Image.open(photo(tmp_path / "photo.png", (400, 300))).convert("RGB")
    image.save(tmp_path / "baseline.jpg")
    image.save(tmp_path / "progressive.jpg", progressive=True)
    assert read_image(tmp_path / "baseline.jpg", 64, max_pixels=20000)[0].size == (100, 75)
    with pytest.raises(ImageError, match=r"progressive.jpg: 400x300 pixels \(0.12 megapixels, a progressive JPEG"):
        read_image(tmp_path / "progressive.jpg", 64, max_pixels=20000)
    with pytest.raises(ImageError, match=r"baseline.jpg: 400x300 pixels"):
        read_image(tmp_path / "baseline.jpg", max_pixels=20000)


MEMORY_PROBE = """
import json, sys
from zennit_resnet_lrp.application.images import Preprocessing, read_image

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

def grown(path, side):
    with open("/proc/self/clear_refs", "w") as handle:  # the peak starts again from what is resident now
        handle.write("5")
    before = status("VmRSS")
    size = read_image(path, side, max_pixels=None)[0].size  # no limit: memory alone is measured
    return size, (status("VmHWM") - before) / 1024  # kB

print(json.dumps([grown(sys.argv[1], Preprocessing().decode_side), grown(sys.argv[2], 0)]))
"""


@pytest.mark.slow
def test_large_jpeg_read_in_bounded_memory(tmp_path):
    """Peak memory (Linux's VmHWM, reset before each read, in a fresh process) grows by less than 100 MB reading a
    20000x20000 JPEG (1.2 GB of pixels at full size); a 6000x6000 one read at full size (108 MB of pixels) shows that
    the probe sees decoding."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident size cannot be reset here")
    huge, control = flat_jpeg(tmp_path / "huge.jpg", 20000, 20000), flat_jpeg(tmp_path / "control.jpg", 6000, 6000)
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(huge), str(control)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (huge_size, huge_mb), (control_size, control_mb) = json.loads(done.stdout)
    assert huge_size == [1250, 1250] and huge_mb < 100, huge_mb
    assert control_size == [6000, 6000] and control_mb > 100, control_mb
    assert "DecompressionBombWarning" not in done.stderr
