"""Images on the command line: one image beyond the pixel limit among good ones fails by its name while the others
are explained; --max-pixels sets the limit for explain and check; a large photo is explained over its reduced
decoding."""
import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from zennit_resnet_lrp.application.demo import demo_images
from zennit_resnet_lrp.cli.main import cli
from helpers import flat_png

DIGITS = demo_images()


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def errors(result):
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_image_beyond_the_pixel_limit_among_good_ones_is_named_and_the_others_explained(tmp_path, recwarn):
    """A 14000x14000 PNG (beyond PIL's decompression-bomb limit) among two digits: both digits' heatmaps and the
    summary written, the PNG named with its size at the end, exit 1; no traceback, no PIL warning."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in DIGITS[:2]:
        shutil.copy(path, folder / path.name)
    flat_png(folder / "bomb.png", 14000, 14000)
    result = run("explain", folder, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert errors(result)[-2:] == [
        f"error: {folder / 'bomb.png'}: 14000x14000 pixels (196 megapixels) is more than the limit of 178956970 "
        "pixels (--max-pixels); raise it to read this image", "error: 1 of 3 image(s) failed"]
    assert len(list((tmp_path / "out").glob("*_heatmap.png"))) == 2
    assert len(json.loads((tmp_path / "out" / "summary.json").read_text())) == 2
    assert not [warning for warning in recwarn if issubclass(warning.category, Image.DecompressionBombWarning)]


def test_max_pixels_sets_the_limit_of_explain_and_check(tmp_path):
    """--max-pixels 1000: a 40x40 image fails by name (the 28x28 digits pass) in explain, and stops check with a
    one-line error; --max-pixels 0 lifts the limit."""
    large = flat_png(tmp_path / "large.png", 40, 40)
    result = run("explain", DIGITS[0], large, "--max-pixels", 1000, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert f"error: {large}: 40x40 pixels (0.0016 megapixels) is more than the limit of 1000 pixels" in result.output
    assert len(list((tmp_path / "out").glob("*_heatmap.png"))) == 1
    result = run("check", large, "--max-pixels", 1000)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert errors(result) == [f"error: {large}: 40x40 pixels (0.0016 megapixels) is more than the limit of 1000 "
                              "pixels (--max-pixels); raise it to read this image"]
    result = run("explain", large, "--max-pixels", 0, "-o", tmp_path / "unlimited")
    assert result.exit_code == 0, result.output


def test_large_photo_is_explained_over_its_reduced_decoding(tmp_path):
    """A 2600x2100 JPEG is decoded at half size, 1300x1050 (no less than 1024 on the shorter side): the heatmap and
    the overlay at the photo's size are drawn over that photo, its aspect ratio kept."""
    ramp = np.linspace(0, 255, 2600)[None, :, None] * np.linspace(0.2, 1, 2100)[:, None, None]
    Image.fromarray(np.repeat(ramp, 3, axis=2).astype(np.uint8)).save(tmp_path / "photo.jpg")
    result = run("explain", tmp_path / "photo.jpg", "--overlay", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for kind in ("heatmap", "overlay"):
        (path,) = (tmp_path / "out").glob(f"photo_*_{kind}.png")
        with Image.open(path) as image:
            assert image.size == (1300, 1050)
