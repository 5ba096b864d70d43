"""What is explained, and the relevance put in for it: a class per sample (its probability, logit or 1), or a
:py:class:`Region` of a dense output (N, K, H, W), such as a segmentation's: "why are these pixels class ``label``"."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# what the relevance put in at the target is: its probability (the paper), its logit, or 1
START_WITH = ("softmax", "logit", "one")


class TargetError(ValueError):
    """A target that does not fit the model's output."""


@dataclass(frozen=True)
class Region:
    """Pixels of a dense output (N, K, H, W) whose class ``label`` is explained: their scores (probabilities, logits
    or 1 per pixel, as ``start_with`` says) summed are the start relevance.

    Parameters
    ----------
    label : int
        The class.
    mask : torch.Tensor, optional
        Which pixels, boolean, (H, W) for every sample or (N, H, W) one per sample. None: the pixels the model
        assigns to ``label`` (its top class there).
    box : (top, left, bottom, right), optional
        A rectangle of pixels instead of a mask (bottom and right excluded).
    """

    label: int
    mask: torch.Tensor | None = None
    box: tuple[int, int, int, int] | None = None

    def pixels(self, output: torch.Tensor, begin: int = 0) -> torch.Tensor:
        """The region of the samples ``begin .. begin + len(output)`` as a boolean (N, H, W) on ``output``'s device."""
        count, height, width = output.shape[0], output.shape[-2], output.shape[-1]
        if self.box is not None:
            top, left, bottom, right = self.box
            mask = torch.zeros(height, width, dtype=torch.bool, device=output.device)
            mask[top:bottom, left:right] = True
            return mask.expand(count, -1, -1)
        if self.mask is None:
            return output.argmax(1) == self.label
        mask = self.mask.to(device=output.device, dtype=torch.bool)
        if mask.shape[-2:] != (height, width):
            raise TargetError(f"the region's mask is {tuple(mask.shape[-2:])} but the output's maps are "
                              f"{(height, width)}")
        return mask.expand(count, -1, -1) if mask.ndim == 2 else mask[begin:begin + count]

    def check_output(self, output: torch.Tensor) -> None:
        """Raise :py:class:`TargetError` (one line) where ``output`` is not dense (N, K, H, W) or ``label`` is not
        one of its K classes."""
        if output.ndim != 4:
            raise TargetError(f"a Region needs a dense output (N, K, H, W); the model's has shape "
                              f"{tuple(output.shape)}")
        if not 0 <= self.label < output.shape[1]:
            raise TargetError(f"region label {self.label} is out of range for {output.shape[1]} classes")

    def of_sample(self, index: int) -> "Region":
        """The region of one sample (its own mask where masks are per sample)."""
        if self.mask is not None and self.mask.ndim == 3:
            return Region(self.label, self.mask[index:index + 1], self.box)
        return self


def class_targets(target, count: int) -> torch.Tensor:
    """``target`` (an int, a sequence or a tensor of class indices) as one index per sample."""
    try:
        target = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TargetError(f"target must be class indices or a Region, not {target!r}") from error
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TargetError("target must hold integer class indices")
    if target.ndim == 0:
        target = target.expand(count)
    if target.ndim != 1 or target.numel() != count:
        raise TargetError(f"target has {target.numel()} entries for {count} samples; give one per sample")
    return target.long()


def start_relevance(output: torch.Tensor, target, start_with: str, begin: int = 0) -> tuple:
    """``(classes, start values, seed)`` for a chunk of outputs starting at sample ``begin``: the explained class per
    sample, the relevance put in per sample, and the output-shaped tensor that puts it in. ``target``: class indices
    for the chunk (None: the top class), or a :py:class:`Region`."""
    if isinstance(target, Region):
        return _region_start(output, target, start_with, begin)
    classes = _classes(target, output)
    if start_with == "softmax":
        values = output.softmax(1).gather(1, classes[:, None])[:, 0]
    elif start_with == "logit":
        values = output.gather(1, classes[:, None])[:, 0]
    else:
        values = torch.ones(output.shape[0], dtype=output.dtype, device=output.device)
    return classes, values, torch.zeros_like(output).scatter(1, classes[:, None], values[:, None])


def _classes(target, output: torch.Tensor) -> torch.Tensor:
    if output.ndim != 2:
        raise TargetError(f"the model's logits have shape {tuple(output.shape)}; expected (N, K) (for a dense output "
                          "(N, K, H, W) explain a zennit_resnet_lrp.Region)")
    classes = output.shape[1]
    if target is None:
        return output.argmax(1)
    target = target.to(output.device)
    bad = (target < 0) | (target >= classes)
    if bool(bad.any()):
        raise TargetError(
            f"target {int(target[bad][0])} is out of range for a model with {classes} classes (0..{classes - 1})"
        )
    return target.long()


def _region_start(output: torch.Tensor, region: Region, start_with: str, begin: int) -> tuple:
    region.check_output(output)
    mask = region.pixels(output, begin)
    if start_with == "softmax":
        scores = output.softmax(1)[:, region.label]
    elif start_with == "logit":
        scores = output[:, region.label]
    else:
        scores = torch.ones_like(output[:, 0])
    per_pixel = scores * mask
    seed = torch.zeros_like(output)
    seed[:, region.label] = per_pixel
    classes = torch.full((output.shape[0],), region.label, dtype=torch.long, device=output.device)
    return classes, per_pixel.flatten(1).sum(1), seed
