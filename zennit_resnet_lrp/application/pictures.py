"""Pictures of many heatmaps, labelled: the overview (each image beside its heatmap, with its name, class,
probability and relevance sum), the comparison grid (images by methods, as the paper's qualitative figure), each
with a colour legend when given one, and a video clip's strip of per-frame maps (:py:func:`frame_strip`).

Text is laid out before it is drawn (:py:func:`caption_layout`, :py:func:`header_layout`, :py:func:`legend_layout`
return the boxes it will cover), so that lines wrap or are cut at the width they have and never run into each other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from zennit.image import palette

from .heatmap import DIVERGING, SIGNS, normalize, render

MARGIN = 4
LEADING = 3  # pixels between one line's lowest glyph and the next line's highest
WRAP = 2  # screen lines one caption line or header may take; the rest is cut with an ellipsis
INDENT = 8  # pixels a caption line's continuation is indented, to tell it from the next caption line
TITLE_LINES = 4  # screen lines of a legend's title
BAR = 12  # height of the legend's colour bar
BAR_WIDTH = 256  # the legend's colour bar when there is room: one pixel per colour of the map
LABEL_GAP = 12  # least pixels between the legend's end and middle labels

Box = Tuple[int, int, int, int]  # left, top, right, bottom, as PIL's textbbox
Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]


@dataclass(frozen=True)
class Text:
    """One line of text as it will be drawn: its text, its anchor (top left) and the box its glyphs cover."""

    text: str
    position: Tuple[int, int]
    box: Box


@dataclass(frozen=True)
class Legend:
    """What the heatmaps' colours mean: the colour map, the part of it the shown values use (``span``, fractions of
    the map from its first colour), and the labels of the bar's left end, middle and right end, with a title."""

    cmap: str
    title: str
    low: str
    high: str
    middle: str = ""
    span: Tuple[float, float] = (0.0, 1.0)


def legend_for(cmap: str, normalized: bool, sign: str) -> Legend:
    """The legend of heatmaps drawn by :py:func:`~.heatmap.render` as ``explain`` draws them.

    Parameters
    ----------
    cmap : str
        The zennit colour map.
    normalized : bool
        Whether the maps were display-normalised (:py:func:`~.heatmap.normalize`, drawn on [-1, 1] for a diverging
        colour map, else on [0, 1]) or not (:py:func:`~.heatmap.keep_sign`, drawn symmetrically around 0 up to each
        map's largest absolute value).
    sign : str
        The sign shown: ``positive``, ``negative``, ``absolute_value`` or ``all``.

    Returns
    -------
    Legend
        The colour map, the part of it the values use and what its ends and middle mean.
    """
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")
    if not normalized:
        title = f"relevance R, each map scaled to its own largest |R|; sign shown: {sign}; colour map: {cmap}"
        return {"all": Legend(cmap, title, "negative (-max|R|)", "positive (+max|R|)", "0"),
                "positive": Legend(cmap, title, "0", "max R", span=(0.5, 1.0)),
                "negative": Legend(cmap, title, "min R (most negative)", "0", span=(0.0, 0.5)),
                "absolute_value": Legend(cmap, title, "0", "max |R|", span=(0.5, 1.0))}[sign]
    title = f"relevance normalised per map (2% outliers clipped); sign shown: {sign}; colour map: {cmap}"
    if sign == "all":
        if cmap not in DIVERGING:  # render gives a map of one sign the whole bar, 0 at one end
            title += "; a map of one sign spans the whole bar"
        return Legend(cmap, title, "negative", "positive", "0")
    # normalize leaves the other signs' values in [0, 1] (the negative sign: the magnitude of negative relevance);
    # a diverging map is drawn on [-1, 1], of which they use the upper half
    high = {"positive": "high positive R", "negative": "high |negative R|", "absolute_value": "high |R|"}[sign]
    return Legend(cmap, title, "0", high, span=(0.5, 1.0) if cmap in DIVERGING else (0.0, 1.0))


def default_font() -> Font:
    """Pillow's own font at 11 pixels; before Pillow 10.1 its bitmap font, one size, Latin-1 only."""
    try:
        return ImageFont.load_default(size=11)
    except TypeError:
        return ImageFont.load_default()


class _Type:
    """Measures, cuts and wraps text in one font."""

    def __init__(self, font: Optional[Font]):
        self.font = font if font is not None else default_font()
        self.draw = ImageDraw.Draw(Image.new("1", (1, 1)))  # a scratch canvas: textbbox measures without drawing
        self.freetype = isinstance(self.font, ImageFont.FreeTypeFont)
        self.ellipsis = "\u2026" if self.freetype else "..."
        self.line = self.draw.textbbox((0, 0), "Ag|jy([", font=self.font)[3] + LEADING

    def legible(self, text: str) -> str:
        """``text`` as the font can draw it: the bitmap font knows Latin-1 only (other characters become ``?``)."""
        return text if self.freetype else text.encode("latin-1", "replace").decode("latin-1")

    def width(self, text: str) -> int:
        return self.draw.textbbox((0, 0), text, font=self.font)[2] if text else 0

    def cut(self, text: str, width: int, always: bool = False) -> str:
        """``text`` if it fits ``width``, else (or ``always``) its longest start that fits with an ellipsis (nothing
        if not even that fits)."""
        if not always and self.width(text) <= width:
            return text
        low, high = 0, len(text)  # the longest prefix that fits lies in [low, high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.width(text[:middle].rstrip() + self.ellipsis) <= width else (low, middle)
        cut = text[:low].rstrip() + self.ellipsis
        return cut if self.width(cut) <= width else ""

    def _prefix(self, text: str, width: int) -> int:
        """Characters of the longest start of ``text`` that fits ``width`` (one at least)."""
        return next((n for n in range(len(text), 1, -1) if self.width(text[:n]) <= width), 1)

    def wrap(self, text: str, width: int, lines: int = WRAP, indent: int = 0) -> List[str]:
        """``text`` in at most ``lines`` screen lines of ``width`` pixels, the lines after the first ``indent``
        pixels narrower: broken at spaces, after ``_`` or ``-``, or inside a word too wide alone; what does not fit
        in the last line is cut with an ellipsis."""
        wrapped: List[str] = []
        current = ""

        def room() -> int:  # the width the line being filled has
            return width - (indent if wrapped else 0)

        for token in re.findall(r"[^\s_-]*[_-]+|[^\s_-]+|\s+", self.legible(text)):
            candidate = current + token if current else token.lstrip()
            if self.width(candidate.rstrip()) <= room():
                current = candidate
                continue
            if current:
                wrapped.append(current.rstrip())
                current = token.lstrip()
            while self.width(current) > room() and len(wrapped) <= lines:  # a word too wide alone
                size = self._prefix(current, room())
                wrapped, current = wrapped + [current[:size]], current[size:]
            if len(wrapped) > lines:  # the rest is cut anyway
                break
        wrapped.append(current.rstrip())
        if len(wrapped) > lines:
            last = self.cut(wrapped[lines - 1], width - (indent if lines > 1 else 0), always=True)
            wrapped = wrapped[:lines - 1] + [last]
        return wrapped

    def place(self, text: str, position: Tuple[int, int]) -> Text:
        text = self.legible(text)
        return Text(text, position, self.draw.textbbox(position, text, font=self.font))


def _caption_lines(typ: _Type, caption: Sequence[str], width: int) -> List[Tuple[str, int]]:
    """A caption's screen lines with their indents: a caption line's continuations are indented."""
    return [(part, INDENT if index else 0) for line in caption
            for index, part in enumerate(typ.wrap(line, width, indent=INDENT))]


def caption_layout(caption: Sequence[str], position: Tuple[int, int], width: int,
                   font: Optional[Font] = None) -> List[Text]:
    """A caption's lines, one under the other from ``position``, each wrapped to ``width`` pixels (at most two
    screen lines a caption line, the second indented by ``INDENT``, the rest cut with an ellipsis).

    Parameters
    ----------
    caption : sequence of str
        The caption's lines.
    position : (int, int)
        The top left of the first line.
    width : int
        Pixels a line may take.
    font : PIL font, optional
        :py:func:`default_font` if not given.

    Returns
    -------
    list of Text
        The screen lines, top to bottom, with the boxes they cover.
    """
    typ = _Type(font)
    x, y = position
    return [typ.place(line, (x + indent, y + index * typ.line))
            for index, (line, indent) in enumerate(_caption_lines(typ, caption, width))]


def header_layout(names: Sequence[str], column: int, tile: int, position: Tuple[int, int] = (0, MARGIN),
                  font: Optional[Font] = None) -> List[Text]:
    """Column headers: ``names[i]`` centred over the ``tile`` pixels wide column ``i * column`` pixels right of
    ``position``, wrapped to ``tile - MARGIN`` pixels (at most two screen lines, the rest cut), so that neighbours
    keep at least ``column - tile + MARGIN`` pixels apart.

    Parameters
    ----------
    names : sequence of str
        One header a column.
    column : int
        Pixels from one column's left edge to the next's.
    tile : int
        Pixels of a column's image, at most ``column``.
    position : (int, int)
        The first column's top left.
    font : PIL font, optional
        :py:func:`default_font` if not given.

    Returns
    -------
    list of Text
        Every header's screen lines.
    """
    typ = _Type(font)
    texts = []
    for index, name in enumerate(names):
        for row, line in enumerate(typ.wrap(name, tile - MARGIN)):
            left = position[0] + index * column + (tile - typ.width(line)) // 2
            texts.append(typ.place(line, (left, position[1] + row * typ.line)))
    return texts


def _bar_width(typ: _Type, legend: Legend) -> int:
    """The least bar width at which the end labels and the centred middle label keep ``LABEL_GAP`` apart."""
    ends = max(typ.width(legend.low), typ.width(legend.high))
    middle = typ.width(legend.middle)
    return 2 * ends + middle + (2 * LABEL_GAP if legend.middle else LABEL_GAP)


def legend_layout(legend: Legend, position: Tuple[int, int], width: int,
                  font: Optional[Font] = None) -> Tuple[Box, List[Text]]:
    """A legend's layout from ``position``: its title (wrapped to ``width``), the colour bar and the bar's labels
    below it (the low end's at its left, the high end's at its right, the middle's centred).

    Parameters
    ----------
    legend : Legend
        What to show.
    position : (int, int)
        The legend's top left.
    width : int
        Pixels the legend may take; the bar takes up to ``BAR_WIDTH``, and more than ``width`` where its labels need
        it (the picture must then widen: see :py:func:`legend_size`).
    font : PIL font, optional
        :py:func:`default_font` if not given.

    Returns
    -------
    (Box, list of Text)
        The colour bar's box and the texts.
    """
    typ = _Type(font)
    x, y = position
    bar_width = max(_bar_width(typ, legend), min(width, BAR_WIDTH))
    title = typ.wrap(legend.title, max(width, bar_width), TITLE_LINES)
    texts = [typ.place(line, (x, y + index * typ.line)) for index, line in enumerate(title)]
    top = y + len(title) * typ.line + 1
    bar = (x, top, x + bar_width, top + BAR)
    below = top + BAR + 2
    texts.append(typ.place(legend.low, (x, below)))
    if legend.middle:
        texts.append(typ.place(legend.middle, (x + (bar_width - typ.width(legend.middle)) // 2, below)))
    texts.append(typ.place(legend.high, (x + bar_width - typ.width(legend.high), below)))
    return bar, texts


def legend_size(legend: Legend, width: int, font: Optional[Font] = None) -> Tuple[int, int]:
    """The pixels (width, height) a legend takes in a picture ``width`` wide, its margins included."""
    bar, texts = legend_layout(legend, (MARGIN, MARGIN), width - 2 * MARGIN, font)
    return max([bar[2]] + [text.box[2] for text in texts]) + MARGIN, max(text.box[3] for text in texts) + 2 * MARGIN


def _draw(draw: ImageDraw.ImageDraw, texts: Sequence[Text], font: Font) -> None:
    for text in texts:
        draw.text(text.position, text.text, fill="black", font=font)


def _with_legend(sheet: Image.Image, legend: Optional[Legend], font: Font) -> Image.Image:
    """``sheet`` with ``legend`` below it (widened if the legend needs more room)."""
    if legend is None:
        return sheet
    size = legend_size(legend, sheet.width, font)
    framed = Image.new("RGB", (max(sheet.width, size[0]), sheet.height + size[1]), "white")
    framed.paste(sheet, (0, 0))
    bar, texts = legend_layout(legend, (MARGIN, sheet.height + MARGIN), framed.width - 2 * MARGIN, font)
    colours = palette(legend.cmap)
    steps = np.round(np.linspace(legend.span[0], legend.span[1], bar[2] - bar[0]) * 255).astype(int)
    framed.paste(Image.fromarray(np.repeat(colours[steps][None], bar[3] - bar[1], axis=0), mode="RGB"), bar[:2])
    draw = ImageDraw.Draw(framed)
    draw.rectangle((bar[0] - 1, bar[1] - 1, bar[2], bar[3]), outline=(128, 128, 128))  # the bar's extent on white
    _draw(draw, texts, font)
    return framed


def _fit(image: Image.Image, tile: int, smooth: bool) -> Image.Image:
    """``image`` scaled to fit a ``tile`` square (aspect kept), centred on white."""
    image = image.convert("RGB")
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.BILINEAR if smooth and scale < 1 else Image.NEAREST)
    square = Image.new("RGB", (tile, tile), "white")
    square.paste(scaled, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return square


def overview(entries: Sequence[Tuple[Image.Image, Image.Image, Sequence[str]]], columns: int = 5, tile: int = 112,
             legend: Optional[Legend] = None) -> Image.Image:
    """Each (image, heatmap, caption lines) as a labelled pair, ``columns`` pairs a row.

    Parameters
    ----------
    entries : sequence of (Image, Image, sequence of str)
        The image, its heatmap and the caption below the pair.
    columns : int
        Pairs a row.
    tile : int
        Pixels of each image's square.
    legend : Legend, optional
        A colour legend drawn below the pairs (see :py:func:`legend_for`).

    Returns
    -------
    PIL.Image.Image
        The sheet.
    """
    font = default_font()
    typ = _Type(font)
    width = 2 * tile + MARGIN  # a pair and its caption
    lines = max((len(_caption_lines(typ, caption, width)) for _, _, caption in entries), default=0)
    cell = (width + 2 * MARGIN, tile + MARGIN + lines * typ.line + MARGIN)
    rows = (len(entries) + columns - 1) // columns
    sheet = Image.new("RGB", (min(columns, len(entries)) * cell[0], MARGIN + rows * cell[1]), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, heatmap, caption) in enumerate(entries):
        x, y = MARGIN + (index % columns) * cell[0], MARGIN + (index // columns) * cell[1]
        sheet.paste(_fit(image, tile, smooth=True), (x, y))
        sheet.paste(_fit(heatmap, tile, smooth=True), (x + tile + MARGIN, y))
        _draw(draw, caption_layout(caption, (x, y + tile + MARGIN), width, font), font)
    return _with_legend(sheet, legend, font)


def comparison(rows: Sequence[Tuple[Image.Image, Sequence[str], Sequence[Optional[Tuple[Image.Image, Sequence[str]]]]]],
               methods: Sequence[str], tile: int = 128, legend: Optional[Legend] = None) -> Image.Image:
    """Images by methods: a header of method names, then one row per image.

    Parameters
    ----------
    rows : sequence of (Image, sequence of str, sequence of (Image, sequence of str) or None)
        The image, its caption, and per method its heatmap with a caption (None: a blank cell).
    methods : sequence of str
        The column headers after the image's.
    tile : int
        Pixels of each image's square.
    legend : Legend, optional
        A colour legend drawn below the grid (see :py:func:`legend_for`).

    Returns
    -------
    PIL.Image.Image
        The grid.
    """
    font = default_font()
    typ = _Type(font)
    column, left = tile + MARGIN, MARGIN // 2  # the columns' gaps split between the left and right edges
    captions = [caption for _, caption, _ in rows] + [cell[1] for _, _, cells in rows for cell in cells if cell]
    lines = max([len(_caption_lines(typ, caption, tile)) for caption in captions] or [0])
    headers = header_layout(["image", *methods], column, tile, (left, MARGIN), font)
    top = max(text.position[1] for text in headers) + typ.line + MARGIN
    height = tile + MARGIN + max(lines, 1) * typ.line + MARGIN
    sheet = Image.new("RGB", ((1 + len(methods)) * column, top + len(rows) * height), "white")
    draw = ImageDraw.Draw(sheet)
    _draw(draw, headers, font)
    for row, (image, caption, cells) in enumerate(rows):
        y = top + row * height
        for index, cell in enumerate([(image, caption), *cells]):
            if cell is not None:
                sheet.paste(_fit(cell[0], tile, smooth=True), (left + index * column, y))
                _draw(draw, caption_layout(cell[1], (left + index * column, y + tile + MARGIN), tile, font), font)
    return _with_legend(sheet, legend, font)


def _clip_maps(relevance: torch.Tensor) -> torch.Tensor:
    """One clip's relevance (C, T, H, W) summed over channels: its per-frame maps (T, H, W)."""
    if not isinstance(relevance, torch.Tensor) or relevance.ndim != 4:
        shape = tuple(relevance.shape) if isinstance(relevance, torch.Tensor) else type(relevance).__name__
        raise ValueError(f"relevance must be one clip's (C, T, H, W), got {shape}; for a batch pass relevance[i]")
    return relevance.detach().sum(0)


def frame_labels(relevance: torch.Tensor) -> list[str]:
    """Each frame's label in :py:func:`frame_strip`: its index and its share of the clip's relevance, ``"t=3 24%"``.

    Parameters
    ----------
    relevance : torch.Tensor
        One clip's relevance (C, T, H, W).

    Returns
    -------
    list of str
        One label a frame. The share is the frame's summed (signed) relevance over the clip's, so shares add up to
        100% (a frame of negative relevance has a negative share); ``"n/a"`` where the clip's relevance sums to 0.
    """
    sums = _clip_maps(relevance).double().flatten(1).sum(1)
    total = float(sums.sum())
    # rounded as integers: a share of -0.3% reads 0%, not -0%
    return [f"t={index} {round(100 * float(value) / total)}%" if total else f"t={index} n/a"
            for index, value in enumerate(sums)]


def _frame_image(frame: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """One frame's pixels (C, H, W) in [0, 1], grey (C = 1) or RGB (C = 3), as an RGB image of ``size``."""
    array = (frame.detach().cpu().double().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")
    return image.convert("RGB").resize(size, Image.BILINEAR)


def _check_frames(frames: torch.Tensor, count: int) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != count \
            or frames.shape[0] not in (1, 3):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be the clip's pixels (C, T, H, W) with C 1 or 3 and T = {count}, got {shape}")
    if frames.numel() and (float(frames.min()) < 0 or float(frames.max()) > 1):
        raise ValueError("frames must be pixels in [0, 1]; undo the model's input normalisation first")


def frame_strip(relevance: torch.Tensor, frames: torch.Tensor | None = None, *, cmap: str = "coldnhot",
                sign: str = "positive", columns: int | None = None, tile: int = 112) -> Image.Image:
    """A video clip's heatmaps, one per frame, side by side, each labelled with its frame index and its share of
    the clip's relevance (:py:func:`frame_labels`, e.g. ``"t=3 24%"``).

    The maps are the relevance summed over channels, display-normalised (:py:func:`~.heatmap.normalize`) with ONE scale over
    the whole clip, not one per frame, and drawn with one colour range: the same colour means the same relevance in
    every frame, so frames are comparable (a frame of half another's relevance is drawn nearer the colour of 0).

    Parameters
    ----------
    relevance : torch.Tensor
        One clip's relevance (C, T, H, W), e.g. ``attribute(model, clips).relevance[0]``.
    frames : torch.Tensor, optional
        The clip's pixels (C, T, H', W') in [0, 1] (C 1 or 3): each frame is drawn above its heatmap.
    cmap : str
        A zennit colour map.
    sign : str
        The relevance shown: ``positive``, ``negative``, ``absolute_value`` or ``all`` (see :py:func:`~.heatmap.normalize`).
    columns : int, optional
        Frames a row (the strip wraps into rows); all ``T`` in one row by default.
    tile : int
        Pixels of a heatmap's longer side.

    Returns
    -------
    PIL.Image.Image
        ``columns`` cells a row, each ``MARGIN`` pixels from the next: the frame (if given), the heatmap, the label.
    """
    maps = _clip_maps(relevance).cpu()
    count, height, width = maps.shape
    columns = count if columns is None else columns
    if columns < 1 or tile < 1:
        raise ValueError(f"columns and tile must be at least 1, not {columns} and {tile}")
    if frames is not None:
        _check_frames(frames, count)
    # the whole clip as one map: one normalisation scale and one render colour range for every frame
    shown = render(normalize(maps[None], sign)[0].reshape(count * height, width), cmap, normalized=True)
    scale = tile / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    font = default_font()
    labels = [caption_layout([label], (0, 0), size[0], font) for label in frame_labels(relevance)]
    label_height = max(text.box[3] for lines in labels for text in lines) + MARGIN
    pictures = 1 if frames is None else 2
    cell = (size[0] + MARGIN, pictures * (size[1] + MARGIN) + label_height)
    rows = -(-count // columns)
    sheet = Image.new("RGB", (MARGIN + min(columns, count) * cell[0], MARGIN + rows * cell[1]), "white")
    draw = ImageDraw.Draw(sheet)
    for index in range(count):
        x, y = MARGIN + (index % columns) * cell[0], MARGIN + (index // columns) * cell[1]
        if frames is not None:
            sheet.paste(_frame_image(frames[:, index], size), (x, y))
            y += size[1] + MARGIN
        heatmap = shown.crop((0, index * height, width, (index + 1) * height))
        sheet.paste(heatmap.resize(size, Image.NEAREST), (x, y))  # nearest: the map's own colours, no blending
        for text in labels[index]:
            draw.text((x + text.position[0], y + size[1] + MARGIN + text.position[1]), text.text, fill="black",
                      font=font)
    return sheet
