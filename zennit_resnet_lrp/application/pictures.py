"""Pictures of many heatmaps, labelled: the overview (each image beside its heatmap, with its name, class,
probability and relevance sum) and the comparison grid (images by methods, as the paper's qualitative figure)."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

LINE = 13  # pixels per caption line
MARGIN = 4


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow before 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _fit(image: Image.Image, tile: int, smooth: bool) -> Image.Image:
    """``image`` scaled to fit a ``tile`` square (aspect kept), centred on white."""
    image = image.convert("RGB")
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.BILINEAR if smooth and scale < 1 else Image.NEAREST)
    square = Image.new("RGB", (tile, tile), "white")
    square.paste(scaled, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return square


def _text(draw: ImageDraw.ImageDraw, position: tuple[int, int], lines: Sequence[str], width: int, font) -> None:
    """Caption lines, each cut to ``width`` pixels."""
    x, y = position
    for line in lines:
        while line and draw.textlength(line, font=font) > width:
            line = line[:-2] + "~" if len(line) > 2 else ""
        draw.text((x, y), line, fill="black", font=font)
        y += LINE


def overview(entries: Sequence[tuple[Image.Image, Image.Image, Sequence[str]]], columns: int = 5,
             tile: int = 112) -> Image.Image:
    """Each (image, heatmap, caption lines) as a labelled pair, ``columns`` pairs a row."""
    lines = max((len(caption) for _, _, caption in entries), default=0)
    cell = (2 * tile + MARGIN, tile + lines * LINE + 2 * MARGIN)
    rows = (len(entries) + columns - 1) // columns
    sheet = Image.new("RGB", (min(columns, len(entries)) * (cell[0] + 2 * MARGIN), rows * cell[1]), "white")
    draw, font = ImageDraw.Draw(sheet), _font()
    for index, (image, heatmap, caption) in enumerate(entries):
        x, y = (index % columns) * (cell[0] + 2 * MARGIN), (index // columns) * cell[1]
        sheet.paste(_fit(image, tile, smooth=True), (x, y))
        sheet.paste(_fit(heatmap, tile, smooth=True), (x + tile + MARGIN, y))
        _text(draw, (x, y + tile + MARGIN), caption, cell[0], font)
    return sheet


def comparison(rows: Sequence[tuple[Image.Image, Sequence[str], Sequence[tuple[Image.Image, Sequence[str]]]]],
               methods: Sequence[str], tile: int = 128) -> Image.Image:
    """Images by methods: a header of method names, then one row per (image, caption lines, (heatmap, caption
    lines) per method)."""
    lines = max([len(caption) for _, caption, _ in rows]
                + [len(caption) for _, _, heatmaps in rows for _, caption in heatmaps] or [0])
    header = LINE + 2 * MARGIN
    height = tile + max(lines, 1) * LINE + 2 * MARGIN
    width = tile + MARGIN
    sheet = Image.new("RGB", ((1 + len(methods)) * width, header + len(rows) * height), "white")
    draw, font = ImageDraw.Draw(sheet), _font()
    _text(draw, (MARGIN, MARGIN), ["image"], tile, font)
    for column, name in enumerate(methods, start=1):
        _text(draw, (column * width, MARGIN), [name], tile, font)
    for row, (image, caption, heatmaps) in enumerate(rows):
        y = header + row * height
        sheet.paste(_fit(image, tile, smooth=True), (0, y))
        _text(draw, (0, y + tile + MARGIN), caption, tile, font)
        for column, (heatmap, lines_below) in enumerate(heatmaps, start=1):
            sheet.paste(_fit(heatmap, tile, smooth=True), (column * width, y))
            _text(draw, (column * width, y + tile + MARGIN), lines_below, tile, font)
    return sheet
