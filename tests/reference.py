"""An independent reference of the paper's LRP for torchvision ResNets, written from the formulas of
docs/method.md with plain tensor code (no zennit, no hooks, no autograd), for the tests to compare against.

It walks the torchvision layout explicitly and counts the relevance each rule loses, by cause.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input

VARIANTS = {  # name -> (identity skip rule, projection skip rule)
    "flows_skip": ("ratio", "ratio"),
    "flows_skip_simple": ("half", "half"),
    "latest": ("none", "ratio"),
    "simple": ("none", "half"),
}


class Reference:
    def __init__(self, model, variant: str, eps: float = 1e-5):
        self.model, self.eps = model, eps
        self.identity_rule, self.projection_rule = VARIANTS[variant]
        self.lost = defaultdict(float)  # cause -> relevance lost (summed over the batch)

    def zplus(self, conv, a, relevance, flat=False):
        weight = conv.weight.clamp(min=0)
        a = torch.ones_like(a) if flat else a
        z = F.conv2d(a, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        self.lost["zero z+"] += float((relevance * (z == 0)).sum())
        s = relevance / (z + self.eps)
        return a * conv2d_input(a.shape, weight, s, conv.stride, conv.padding, conv.dilation, conv.groups)

    def rho(self, rule, h_m, h_s):
        if rule == "none":
            return torch.ones_like(h_m)
        if rule == "half":
            return torch.full_like(h_m, 0.5)
        total = h_m.abs() + h_s.abs()
        return torch.where(total > 0, h_m.abs() / torch.where(total > 0, total, 1.0), 0.5)

    def block(self, block, x, relevance):
        bottleneck = hasattr(block, "conv3")
        a1 = F.relu(block.bn1(block.conv1(x)))
        if bottleneck:
            a2 = F.relu(block.bn2(block.conv2(a1)))
            h_m = block.bn3(block.conv3(a2))
        else:
            h_m = block.bn2(block.conv2(a1))
        h_s = x if block.downsample is None else block.downsample(x)
        rule = self.identity_rule if block.downsample is None else self.projection_rule
        rho = self.rho(rule, h_m, h_s)
        r_m, r_s = rho * relevance, (1 - rho) * relevance
        if bottleneck:
            r = self.zplus(block.conv3, a2, r_m)
            r = self.zplus(block.conv2, a1, r)
        else:
            r = self.zplus(block.conv2, a1, r_m)
        r_x = self.zplus(block.conv1, x, r)
        r_x = r_x + (r_s if block.downsample is None else self.zplus(block.downsample[0], x, r_s))
        return r_x

    @torch.no_grad()
    def __call__(self, x, target=None):
        m = self.model
        stem = F.relu(m.bn1(m.conv1(x)))
        pooled = m.maxpool(stem)
        inputs, h = [], pooled
        blocks = [block for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for block in layer]
        for block in blocks:
            inputs.append(h)
            h = block(h)
        features = m.avgpool(h).flatten(1)
        logits = m.fc(features)
        target = logits.argmax(1) if target is None else target
        start = logits.softmax(1).gather(1, target[:, None])[:, 0]
        relevance = torch.zeros_like(logits).scatter(1, target[:, None], start[:, None])
        # fc: z+ with W+, bias 0
        weight = m.fc.weight.clamp(min=0)
        z = features @ weight.T
        self.lost["zero z+"] += float((relevance * (z == 0)).sum())
        r = features * ((relevance / (z + self.eps)) @ weight)
        # adaptive average pool: proportional
        z = h.mean((2, 3))
        r = h * (1 / (h.shape[2] * h.shape[3])) * (r / (z + self.eps))[:, :, None, None]
        for block, block_input in reversed(list(zip(blocks, inputs))):
            r = self.block(block, block_input, r)
        # max-pool stand-in: 2x2 average pool over the max-pool's input
        z = F.avg_pool2d(stem, 2, 2)
        self.lost["max-pool stand-in"] += float((r * (z == 0)).sum())
        s = r / (z + self.eps)
        r = stem * 0.25 * s.repeat_interleave(2, 2).repeat_interleave(2, 3)
        # first conv: flat input z+
        r = self.zplus(m.conv1, x, r, flat=True)
        return r, start, target
