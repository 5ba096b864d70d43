"""Small classifiers built from torchvision's own blocks (two ResNets, of BasicBlocks and of Bottlenecks, a ConvNeXt
and a vision transformer), trained on MNIST digits and shipped with the package (``scripts/train_demo.py`` trains them), with
held-out digits to explain offline."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from .images import Preprocessing

DATA = Path(__file__).parent / "data"
DIGITS = DATA / "digits"
MNIST_PREPROCESSING = Preprocessing(resize=28, crop=28, mean=(0.1307,), std=(0.3081,), channels=1)


def _projection(inplanes: int, planes: int, stride: int) -> torch.nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return torch.nn.Sequential(
        torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False), torch.nn.BatchNorm2d(planes)
    )


class SmallResNet(torch.nn.Module):
    """A torchvision-style ResNet for 1x28x28 digits: 3x3 stem, 3x3 max-pool, four stages of one block each.

    The attribute names (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``..``layer4``, ``avgpool``, ``fc``)
    are torchvision's, so everything that walks a torchvision ResNet walks this one.
    """

    def __init__(self, block: type, widths=(16, 32, 64, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(widths[0])
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        for index, (width, stride) in enumerate(zip(widths, (1, 2, 2, 1)), start=1):
            planes = width // block.expansion
            block_module = block(inplanes, planes, stride, _projection(inplanes, planes * block.expansion, stride))
            setattr(self, f"layer{index}", torch.nn.Sequential(block_module))
            inplanes = planes * block.expansion
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SmallConvNeXt(torch.nn.Sequential):
    """A ConvNeXt for 1x28x28 digits, built from torchvision's own ``CNBlock`` and ``LayerNorm2d``: a 4x4, stride-2
    stem (overlapping patches) with layer norm, two stages of two blocks (7x7 depthwise convolution, layer norm after
    a permute, inverted bottleneck with GELU, layer scale, residual addition) with a layer-norm-and-2x2-convolution
    downsampling between them, then average pooling, layer norm and a linear head."""

    def __init__(self, widths=(32, 64), depth: int = 2, num_classes: int = 10) -> None:
        from functools import partial

        from torchvision.models.convnext import CNBlock, LayerNorm2d

        norm = partial(torch.nn.LayerNorm, eps=1e-6)
        layers = [torch.nn.Conv2d(1, widths[0], 4, 2, 1), LayerNorm2d(widths[0], eps=1e-6)]
        for index, width in enumerate(widths):
            if index:
                layers += [LayerNorm2d(widths[index - 1], eps=1e-6), torch.nn.Conv2d(widths[index - 1], width, 2, 2)]
            layers += [CNBlock(width, 1e-6, 0.0, norm) for _ in range(depth)]
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), norm(widths[-1]),
                   torch.nn.Linear(widths[-1], num_classes)]
        super().__init__(*layers)


def demo_vit(num_classes: int = 10) -> torch.nn.Module:
    """A vision transformer for 1x28x28 digits, torchvision's own ``VisionTransformer``: 4x4 patches (49 tokens and a
    class token), four blocks of width 64 with four heads (``nn.MultiheadAttention``), a linear head."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=28, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
                              num_classes=num_classes)
    model.conv_proj = torch.nn.Conv2d(1, 64, 4, 4)  # one channel: digits
    return model


def demo_convnext(num_classes: int = 10) -> SmallConvNeXt:
    return SmallConvNeXt(num_classes=num_classes)


def demo_basic(num_classes: int = 10) -> SmallResNet:
    return SmallResNet(BasicBlock, num_classes=num_classes)


def demo_bottleneck(num_classes: int = 10) -> SmallResNet:
    return SmallResNet(Bottleneck, widths=(32, 64, 128, 128), num_classes=num_classes)


class SmallSegmenter(torch.nn.Module):
    """A fully convolutional segmenter for 1x56x56 canvases of digits, built from torchvision's ``BasicBlock``:
    a 3x3 stem, two stride-2 blocks and one more block at 1/4 size (receptive field about a digit), then a decoder
    that upsamples twice (bilinear, ``nn.Upsample``) with a 1x1 convolution and adds the encoder's map of the same
    size (skip by addition), and a 1x1 head. Returns logits (N, num_classes, H, W)."""

    def __init__(self, widths=(16, 32, 48), num_classes: int = 11) -> None:
        super().__init__()
        stem, middle, bottom = widths
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, stem, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(stem),
                                        torch.nn.ReLU(inplace=True))
        self.down1 = BasicBlock(stem, middle, 2, _projection(stem, middle, 2))
        self.down2 = torch.nn.Sequential(BasicBlock(middle, bottom, 2, _projection(middle, bottom, 2)),
                                         BasicBlock(bottom, bottom))
        self.up2 = self._up(bottom, middle)
        self.fuse2 = _conv_bn_relu(middle)
        self.up1 = self._up(middle, stem)
        self.fuse1 = _conv_bn_relu(stem)
        self.head = torch.nn.Conv2d(stem, num_classes, 1)

    @staticmethod
    def _up(inplanes: int, planes: int) -> torch.nn.Sequential:
        # 1x1 first: upsampling the narrower map is cheaper and the same linear map
        return torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes, 1, bias=False), torch.nn.BatchNorm2d(planes),
                                   torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.stem(x)
        half = self.down1(full)
        quarter = self.down2(half)
        half = self.fuse2(self.up2(quarter) + half)
        return self.head(self.fuse1(self.up1(half) + full))


def _conv_bn_relu(planes: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(planes),
                               torch.nn.ReLU(inplace=True))


def demo_segmenter(num_classes: int = 11) -> SmallSegmenter:
    """The shipped segmenter's architecture: classes 0..9 the digits, class 10 the background."""
    return SmallSegmenter(num_classes=num_classes)


@dataclass
class DemoModel:
    """A small model shipped with the package: how to build it, its checkpoint and its preprocessing."""

    build: Callable[[int], torch.nn.Module]
    checkpoint: str
    preprocessing: Preprocessing
    categories: list[str]
    num_classes: int = 10
    task: str = "classification"


DIGIT_NAMES = [str(digit) for digit in range(10)]
# the segmenter's classes: the digits, then the background (class 10)
SEGMENTATION_NAMES = [*DIGIT_NAMES, "background"]
CANVAS_SIZE = 56
CANVAS_PREPROCESSING = Preprocessing(resize=CANVAS_SIZE, crop=CANVAS_SIZE, mean=(0.1307,), std=(0.3081,), channels=1)
CANVASES = DATA / "canvases"
# model name -> the shipped model: names that --model and load_model() accept besides torchvision's
DEMO_MODELS: dict[str, DemoModel] = {
    "demo-mnist": DemoModel(demo_basic, str(DATA / "demo-mnist.pt"), MNIST_PREPROCESSING, DIGIT_NAMES),
    "demo-mnist-bottleneck": DemoModel(
        demo_bottleneck, str(DATA / "demo-mnist-bottleneck.pt"), MNIST_PREPROCESSING, DIGIT_NAMES
    ),
    "demo-mnist-convnext": DemoModel(
        demo_convnext, str(DATA / "demo-mnist-convnext.pt"), MNIST_PREPROCESSING, DIGIT_NAMES
    ),
    "demo-mnist-vit": DemoModel(demo_vit, str(DATA / "demo-mnist-vit.pt"), MNIST_PREPROCESSING, DIGIT_NAMES),
    "demo-digits-segmentation": DemoModel(
        demo_segmenter, str(DATA / "demo-digits-segmentation.pt"), CANVAS_PREPROCESSING, SEGMENTATION_NAMES,
        num_classes=len(SEGMENTATION_NAMES), task="segmentation",
    ),
}
DEFAULT_DEMO = "demo-mnist"


MNIST_CSV = DATA / "mnist_5k.csv.gz"
SPLIT_SEED = 0


def mnist_split() -> tuple[tuple, tuple]:
    """The seeded split of the shipped 5,000 MNIST digits: ((pixels, labels) to train: 4,000,
    (pixels, labels) held out: 1,000); pixels are uint8 (N, 1, 28, 28)."""
    import gzip

    import numpy as np

    with gzip.open(MNIST_CSV, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :784].reshape(-1, 1, 28, 28).astype(np.uint8), table[:, 784]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    train, held_out = order[:4000], order[4000:]
    return (pixels[train], labels[train]), (pixels[held_out], labels[held_out])


def export_held_out(folder: str | Path, limit: int | None = None) -> Path:
    """Write the held-out digits as an image-folder tree (``folder/<digit>/<index>.png``) for the evaluation."""
    from PIL import Image

    folder = Path(folder)
    _, (pixels, labels) = mnist_split()
    for index in range(len(labels) if limit is None else min(limit, len(labels))):
        target = folder / str(int(labels[index]))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[index, 0]).save(target / f"{index:04d}.png")
    return folder


def looks_like_a_digit(image, side: int = 28) -> bool:
    """Whether a PIL image is what a demo model was trained on: grey (no colour) and no larger than twice its
    ``side`` (28 pixels for the digits, 56 for the canvases)."""
    import numpy as np

    if max(image.size) > 2 * side:
        return False
    if image.mode in ("L", "F"):
        return True
    array = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.abs(array - array.mean(-1, keepdims=True)).max() <= 8)


def demo_images() -> list[Path]:
    """The shipped held-out digits (PNG, 28x28), named ``<index>_label<digit>.png``."""
    return sorted(DIGITS.glob("*.png"))


BACKGROUND = 10  # the segmenter's background class
# a canvas pixel is its digit's class where the digit is brighter than this (uint8), else background
DIGIT_THRESHOLD = 127


def digit_canvases(pixels, labels, count: int, seed: int, size: int = CANVAS_SIZE,
                   digits: tuple[int, int] = (2, 3)) -> tuple:
    """Seeded canvases of digits for the segmenter: each holds ``digits[0]..digits[1]`` digits (cropped to their
    strokes) at random places whose boxes neither overlap nor touch.

    Parameters
    ----------
    pixels, labels : numpy.ndarray
        Digits, uint8 (M, 1, 28, 28), and their classes (M,), e.g. one half of :py:func:`mnist_split`.
    count : int
        Canvases to draw.
    seed : int
        The same seed draws the same canvases.
    size : int
        Canvas height and width.
    digits : (int, int)
        Fewest and most digits per canvas.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Canvases, uint8 (count, 1, size, size), and label maps, int64 (count, size, size): a pixel's digit where the
        digit is brighter than :py:data:`DIGIT_THRESHOLD`, else :py:data:`BACKGROUND`.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    canvases = np.zeros((count, 1, size, size), dtype=np.uint8)
    maps = np.full((count, size, size), BACKGROUND, dtype=np.int64)
    for index in range(count):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(digits[0], digits[1] + 1))):
            _place_digit(rng, pixels, labels, canvases[index, 0], maps[index], boxes)
    return canvases, maps


def _place_digit(rng, pixels, labels, canvas, label_map, boxes: list, tries: int = 50) -> None:
    """Paste one random digit where its box keeps a pixel's gap to ``boxes`` (skipped if no place is found)."""
    import numpy as np

    for _ in range(tries):
        chosen = int(rng.integers(len(labels)))
        digit = pixels[chosen, 0]
        rows, columns = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
        crop = digit[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
        height, width = crop.shape
        top = int(rng.integers(0, canvas.shape[0] - height + 1))
        left = int(rng.integers(0, canvas.shape[1] - width + 1))
        box = (top, left, top + height, left + width)
        if all(box[2] < other[0] or other[2] < box[0] or box[3] < other[1] or other[3] < box[1] for other in boxes):
            boxes.append(box)
            canvas[top:box[2], left:box[3]] = crop
            label_map[top:box[2], left:box[3]][crop > DIGIT_THRESHOLD] = int(labels[chosen])
            return


def demo_canvases() -> list[Path]:
    """The shipped held-out canvases for the segmenter (PNG, 56x56), without their label maps."""
    return sorted(path for path in CANVASES.glob("*.png") if not path.stem.endswith("_labels"))


def canvas_labels(canvas: str | Path) -> Path:
    """The label map of a shipped canvas: a PNG beside it (``<name>_labels.png``), one class index per pixel."""
    canvas = Path(canvas)
    return canvas.with_name(f"{canvas.stem}_labels.png")
