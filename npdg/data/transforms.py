"""Tensor transforms: normalization and the training augmentation.

Images are float tensors (3, H, W) with values in [0, 1] (before :func:`normalize`), labels int64
(H, W) train ids with 255 = ignore. Every random choice is drawn from an explicit
``torch.Generator``, so a sample's augmentation is reproducible (the datasets seed one generator per
(seed, epoch, index), see :class:`npdg.data.base.SegmentationDataset`).
"""

import math

import torch
import torch.nn.functional as F

from .labels import IGNORE_INDEX

# ImageNet statistics: the backbones' pretrained weights (when a user supplies them) expect these.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(image):
    """[0, 1] image (..., 3, H, W) -> zero-mean / unit-std per ImageNet channel statistics."""
    mean = image.new_tensor(MEAN).view(3, 1, 1)
    std = image.new_tensor(STD).view(3, 1, 1)
    return (image - mean) / std


def denormalize(image):
    """Inverse of :func:`normalize` (for visualisation)."""
    mean = image.new_tensor(MEAN).view(3, 1, 1)
    std = image.new_tensor(STD).view(3, 1, 1)
    return image * std + mean


def resize(image, label, size):
    """Resize to (H, W): bilinear for the image, nearest for the label (labels are never blended)."""
    size = tuple(int(s) for s in size)
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if label is not None and tuple(label.shape[-2:]) != size:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def _uniform(generator, lo, hi):
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def gaussian_blur(image, sigma):
    """Separable Gaussian blur of a (3, H, W) image, reflect padding, kernel radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(image.device)
    horizontal, vertical = k.view(1, 1, 1, -1).expand(3, 1, 1, -1), k.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    img = F.conv2d(F.pad(image[None], (radius, radius, 0, 0), mode="reflect"), horizontal, groups=3)
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), vertical, groups=3)
    return img[0]


def color_jitter(image, strength, generator):
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
    b, c, s = (_uniform(generator, 1 - strength, 1 + strength) for _ in range(3))
    image = image * b
    mean = image.mean()
    image = (image - mean) * c + mean
    gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
    image = (image - gray) * s + gray
    return image.clamp(0, 1)


class TrainAugment:
    """Random scale -> random crop (pad: image 0, label 255) -> horizontal flip -> optional photometric.

    ``crop`` (H, W) is the output size. ``blur_prob`` / ``jitter`` enable the photometric
    augmentations used by the baselines (0 = off). Call as ``aug(image, label, generator)``.
    """

    def __init__(self, crop, scale_range=(0.5, 2.0), flip=True, blur_prob=0.0, blur_sigma=(0.1, 2.0),
                 jitter=0.0):
        self.crop = tuple(int(s) for s in crop)
        self.scale_range, self.flip = scale_range, flip
        self.blur_prob, self.blur_sigma, self.jitter = blur_prob, blur_sigma, jitter

    def __call__(self, image, label, generator=None):
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        H, W = image.shape[-2:]
        scale = _uniform(generator, *self.scale_range)
        new = (max(1, round(H * scale)), max(1, round(W * scale)))
        image, label = resize(image, label, new)
        ch, cw = self.crop
        ph, pw = max(ch - new[0], 0), max(cw - new[1], 0)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
        top = int(torch.randint(0, image.shape[-2] - ch + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[-1] - cw + 1, (), generator=generator))
        image = image[:, top:top + ch, left:left + cw]
        label = label[top:top + ch, left:left + cw]
        if self.flip and torch.rand((), generator=generator).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if self.jitter > 0:
            image = color_jitter(image, self.jitter, generator)
        if self.blur_prob > 0 and torch.rand((), generator=generator).item() < self.blur_prob:
            image = gaussian_blur(image, _uniform(generator, *self.blur_sigma))
        return image.contiguous(), label.contiguous()
