"""The embedded default benchmark: procedurally generated street scenes in several appearance domains.

Scenes (labels) come from :func:`.scene.make_scene` and depend only on (seed, split, index); the
appearance of a scene depends on the domain. ``source`` is the training domain; the unseen target
domains share the label distribution but change class colours, textures, lighting and weather:

- ``night``   dark, blue-tinted, lit windows / lamps / car lights, sensor noise
- ``fog``     depth-dependent haze (Koschmieder model) that washes out distant structure
- ``rain``    darker, desaturated, rain streaks, slight blur and noise
- ``snow``    snow-covered ground and foliage, white sky, flakes
- ``painted`` a different palette for every class (road terracotta, foliage purple, sky orange, ...)
  and striped textures: colour shortcuts learned on ``source`` fail outright.

Everything is vectorised numpy. Measured on one core of the 2-core CPU build machine, one process:
source ~140 img/s at 128x256 and ~55 img/s at 256x512; targets 10-40 % slower (extra effects).
"""

from dataclasses import dataclass, field

import numpy as np

from .base import DatasetError, SegmentationDataset
from .scene import (
    BUILDING,
    BUS,
    CAR,
    FENCE,
    LIGHT,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRUCK,
    VEG,
    WALL,
    make_scene,
)

SPLITS = {"train": 0, "val": 1, "test": 2}  # separate seed streams, so splits never share a scene
DEFAULT_SIZE = (128, 256)
DEFAULT_NUM = {"train": 2000, "val": 200, "test": 200}


@dataclass(frozen=True)
class Domain:
    name: str
    code: int                      # stable id used to seed this domain's appearance stream
    palette: dict                  # train id -> base RGB in [0, 1]
    instances: dict = field(default_factory=dict)  # train id -> list of RGB picked per instance
    sky: tuple = ((0.35, 0.55, 0.85), (0.75, 0.85, 0.95))  # zenith, horizon
    texture: float = 1.0           # multiplies the per-class texture amplitudes
    stripes: float = 0.0           # amplitude of a striped texture (painted domain)
    jitter: float = 0.03           # per-image std of every class colour


_SOURCE = {ROAD: (0.33, 0.33, 0.35), SIDEWALK: (0.62, 0.58, 0.56), BUILDING: (0.58, 0.45, 0.38),
           WALL: (0.62, 0.6, 0.55), FENCE: (0.48, 0.36, 0.26), POLE: (0.45, 0.46, 0.48),
           LIGHT: (0.15, 0.15, 0.13), SIGN: (0.8, 0.1, 0.1), VEG: (0.2, 0.42, 0.15),
           TERRAIN: (0.45, 0.55, 0.25), SKY: (0.6, 0.72, 0.9), PERSON: (0.3, 0.25, 0.25),
           CAR: (0.5, 0.5, 0.55), TRUCK: (0.8, 0.8, 0.8), BUS: (0.8, 0.7, 0.1)}
_SOURCE_INST = {
    BUILDING: [(0.58, 0.45, 0.38), (0.65, 0.6, 0.5), (0.45, 0.42, 0.42), (0.7, 0.55, 0.45)],
    SIGN: [(0.8, 0.1, 0.1), (0.1, 0.25, 0.7), (0.9, 0.75, 0.1), (0.9, 0.9, 0.9)],
    PERSON: [(0.2, 0.2, 0.25), (0.6, 0.1, 0.1), (0.15, 0.2, 0.45), (0.7, 0.7, 0.65), (0.45, 0.35, 0.2)],
    CAR: [(0.75, 0.75, 0.78), (0.1, 0.1, 0.1), (0.6, 0.05, 0.05), (0.1, 0.2, 0.5), (0.9, 0.9, 0.9)],
    TRUCK: [(0.9, 0.9, 0.9), (0.2, 0.4, 0.7), (0.7, 0.3, 0.1)],
    BUS: [(0.85, 0.75, 0.1), (0.8, 0.15, 0.1), (0.2, 0.45, 0.75)],
}


def _repaint(rgb):
    """Painted palette: 60 % of a channel rotation (R<-B, G<-R, B<-G) with a warm tint, 40 % the original;
    greys stay near grey, saturated colours move to other hues."""
    r, g, b = rgb
    rotated = (min(1.0, 1.15 * b), 0.95 * r, 0.75 * g)
    return tuple(0.4 * s + 0.6 * t for s, t in zip(rgb, rotated, strict=True))


_PAINTED = {cls: _repaint(rgb) for cls, rgb in _SOURCE.items()}
_PAINTED_INST = {cls: [_repaint(c) for c in colours] for cls, colours in _SOURCE_INST.items()}

DOMAIN_TABLE = {
    "source": Domain("source", 0, _SOURCE, _SOURCE_INST),
    "night": Domain("night", 1, _SOURCE, _SOURCE_INST),
    "fog": Domain("fog", 2, _SOURCE, _SOURCE_INST),
    "rain": Domain("rain", 3, _SOURCE, _SOURCE_INST),
    "snow": Domain("snow", 4, _SOURCE, _SOURCE_INST, sky=((0.78, 0.8, 0.84), (0.88, 0.89, 0.9))),
    "painted": Domain("painted", 5, _PAINTED, _PAINTED_INST, sky=((0.83, 0.42, 0.6), (0.95, 0.77, 0.76)),
                      texture=1.5, stripes=0.18, jitter=0.05),
}
DOMAINS = tuple(DOMAIN_TABLE)
TARGET_DOMAINS = tuple(d for d in DOMAINS if d != "source")

# texture amplitude per class (fraction of the colour), before the domain's multiplier
_TEXTURE = np.full(19, 0.06, np.float32)
_TEXTURE[[VEG, TERRAIN]] = 0.3
_TEXTURE[[ROAD, SKY]] = [0.08, 0.03]


def value_noise(rng, H, W, cells):
    """Smooth N(0, 1)-ish noise: a (cells_y+1, cells_x+1) random grid bilinearly upsampled to (H, W).
    The grid size is fixed in cells, so the pattern is the same at every resolution."""
    cy, cx = cells
    grid = rng.standard_normal((cy + 1, cx + 1)).astype(np.float32)

    def axis(n, c):
        t = (np.arange(n, dtype=np.float32) + 0.5) / n * c
        i = np.minimum(t.astype(np.int64), c - 1)
        return i, (t - i)

    iy, wy = axis(H, cy)
    ix, wx = axis(W, cx)
    rows = grid[iy] * (1 - wy)[:, None] + grid[iy + 1] * wy[:, None]
    return rows[:, ix] * (1 - wx) + rows[:, ix + 1] * wx


def _box_blur(img, r):
    """(H, W, 3) box blur of radius r with edge clamping (cumulative sums, O(HW))."""
    k = 2 * r + 1
    c = np.cumsum(np.pad(img, ((r + 1, r), (0, 0), (0, 0)), mode="edge"), axis=0, dtype=np.float32)
    img = (c[k:] - c[:-k]) / k
    c = np.cumsum(np.pad(img, ((0, 0), (r + 1, r), (0, 0)), mode="edge"), axis=1, dtype=np.float32)
    return (c[:, k:] - c[:, :-k]) / k


def _base_colours(scene, dom, rng):
    label, inst = scene.label, scene.inst
    pal = np.full((256, 3), 0.5, np.float32)
    for cls, rgb in dom.palette.items():
        pal[cls] = rgb
    pal[:19] += rng.normal(0, dom.jitter, (19, 3)).astype(np.float32)
    n = len(scene.inst_class)
    ic = pal[scene.inst_class] * rng.uniform(0.85, 1.15, (n, 1)).astype(np.float32)
    choice = rng.random(n)
    for cls, colours in dom.instances.items():
        sel = scene.inst_class == cls
        picks = np.asarray(colours, np.float32)[(choice[sel] * len(colours)).astype(np.int64)]
        ic[sel] = picks + rng.normal(0, 0.04, picks.shape).astype(np.float32)
    table = np.concatenate([pal[:19], ic])  # one lookup: stuff colour by class, things by instance
    img = np.take(table, np.where(inst > 0, 19 + inst, label), axis=0)
    H, W = label.shape
    sky_px = label == SKY
    t = np.clip((np.nonzero(sky_px)[0].astype(np.float32) + 0.5) / max(scene.horizon, 1.0), 0, 1)[:, None]
    zenith, horizon = (np.asarray(c, np.float32) for c in dom.sky)
    clouds = 0.05 * value_noise(rng, H, W, (3, 8))[sky_px][:, None]
    img[sky_px] = zenith * (1 - t) + horizon * t + clouds
    return img


def _noise(rng, shape, std):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _grain(rng, shape, std):
    """Cheap sensor grain: uniform noise with the given std (3x faster than Gaussian)."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(std * 12 ** 0.5)


def render(scene, domain, rng):
    """Scene + domain -> float32 (H, W, 3) image in [0, 1]."""
    dom = DOMAIN_TABLE[domain]
    label = scene.label
    H, W = label.shape
    img = _base_colours(scene, dom, rng)
    fine, coarse = value_noise(rng, H, W, (48, 96)), value_noise(rng, H, W, (6, 12))
    tex = _TEXTURE[np.minimum(label, 18)] * dom.texture
    factor = 1 + tex * (0.7 * fine + 0.3 * coarse)  # all per-pixel gains folded into one (H, W) map
    if dom.stripes:
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) / W
        ang = rng.uniform(0, np.pi, 19).astype(np.float32)[np.minimum(label, 18)]
        factor *= 1 + dom.stripes * np.sin(60 * (xx * np.cos(ang) + yy * np.sin(ang)))
    factor *= scene.shade * np.float32(rng.uniform(0.85, 1.15))
    factor *= 1 + 0.08 * value_noise(rng, H, W, (2, 4))
    img *= factor[..., None]
    img = _EFFECTS.get(domain, lambda i, s, r: i)(img, scene, rng)
    img += _grain(rng, img.shape, 0.01)
    return np.clip(img, 0, 1, out=img)


def _night(img, scene, rng):
    H, W = scene.label.shape
    out = img * np.float32(rng.uniform(0.22, 0.38)) * np.array([0.6, 0.7, 1.0], np.float32)
    sky = scene.label == SKY
    glow = np.clip(np.nonzero(sky)[0] / max(scene.horizon, 1.0), 0, 1)[:, None].astype(np.float32) ** 2
    out[sky] = np.array([0.04, 0.05, 0.12], np.float32) + glow * np.array([0.2, 0.15, 0.12], np.float32)
    lit = (scene.label == BUILDING) & (scene.shade < 0.5) & (value_noise(rng, H, W, (24, 48)) > 0.3)
    out[lit] = np.array([0.9, 0.75, 0.4], np.float32) * rng.uniform(0.6, 1.0)
    lamps = (scene.shade > 2.0) & np.isin(scene.label, (CAR, LIGHT))
    out[lamps] = np.array([1.0, 0.3, 0.15], np.float32)
    ys, xs = np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32)
    for _ in range(rng.integers(2, 5)):  # pools of street light (separable Gaussian)
        cy, cx, r = rng.uniform(0.5, 1.0) * H, rng.uniform(0, 1) * W, rng.uniform(0.1, 0.3) * W
        pool = np.exp(-(ys - cy) ** 2 / (2 * r * r))[:, None] * np.exp(-(xs - cx) ** 2 / (2 * r * r))[None, :]
        out += 0.25 * pool[..., None] * img
    return out + _noise(rng, out.shape, 0.025)


def _fog(img, scene, rng):
    t = np.exp(-np.minimum(scene.depth, 1e3) / rng.uniform(25, 70))[..., None].astype(np.float32)
    air = np.array([0.78, 0.8, 0.82], np.float32) * rng.uniform(0.9, 1.05)
    gray = img.mean(-1, keepdims=True)
    return (0.8 * img + 0.2 * gray) * t + air * (1 - t)


def _rain(img, scene, rng):
    H, W = scene.label.shape
    gray = img.mean(-1, keepdims=True)
    out = (0.65 * img + 0.35 * gray) * 0.75 * np.array([0.9, 0.95, 1.05], np.float32)
    out = _box_blur(out, max(1, round(W / 256)))
    n, length = int(0.004 * H * W), max(3, W // 40)
    k = np.arange(length)
    ys = (rng.integers(-length, H, n)[:, None] + k).ravel()
    xs = (rng.integers(0, W + length // 3, n)[:, None] - k // 3).ravel()  # slanted streaks
    ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    streak = np.zeros((H, W), np.float32)
    streak[ys[ok], xs[ok]] = 1.0
    out += 0.35 * np.clip(streak, 0, 1)[..., None]
    return out + _noise(rng, out.shape, 0.02)


def _snow(img, scene, rng):
    H, W = scene.label.shape
    label = scene.label
    cover = np.zeros((H, W), np.float32)
    patch = np.clip(0.5 + 0.5 * value_noise(rng, H, W, (12, 24)), 0, 1)
    amounts = ((TERRAIN, 0.85), (SIDEWALK, 0.6), (ROAD, 0.3), (VEG, 0.3), (FENCE, 0.2), (WALL, 0.2))
    for cls, amount in amounts:
        cover[label == cls] = amount
    cover *= 0.5 + 0.5 * patch
    white = np.array([0.92, 0.94, 0.97], np.float32)
    out = img * (1 - cover[..., None]) + white * cover[..., None]
    out = out * 1.05 + 0.05
    flakes = (rng.random((H, W)) < 0.006)
    out[flakes] = 0.97
    return out


_EFFECTS = {"night": _night, "fog": _fog, "rain": _rain, "snow": _snow}


class SyntheticSegmentation(SegmentationDataset):
    """``num`` scenes of ``split`` rendered in ``domain`` at ``size`` (H, W), generated on the fly.

    Sample ``i`` is a pure function of (seed, split, i) for the labels and of (seed, split, i, domain)
    for the appearance, so every domain shows the same scenes with identical labels. ``cache=True``
    keeps generated uint8 samples in memory (a 2000-image 128x256 train set is ~260 MB).
    See :class:`.base.SegmentationDataset` for ``transform`` / ``normalize`` / the sample contract.
    """

    def __init__(self, domain="source", split="train", size=DEFAULT_SIZE, num=None, seed=0, *, cache=False,
                 transform=None, normalize=True, aug_seed=0):
        if domain not in DOMAIN_TABLE:
            raise DatasetError(f"unknown synthetic domain {domain!r}; valid: {', '.join(DOMAINS)}")
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        super().__init__(size=None, transform=transform, normalize=normalize, aug_seed=aug_seed)
        self.domain, self.split, self.seed = domain, split, int(seed)
        self.gen_size = tuple(int(s) for s in (size or DEFAULT_SIZE))
        self.num = int(num) if num is not None else DEFAULT_NUM[split]
        self._cache = {} if cache else None

    def __len__(self):
        return self.num

    def name(self, index):
        return f"{self.domain}_{self.split}_{index:06d}"

    def scene(self, index):
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        return make_scene(rng, *self.gen_size)

    def load(self, index):
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        scene = self.scene(index)
        stream = [self.seed, SPLITS[self.split], index, 1000 + DOMAIN_TABLE[self.domain].code]
        rng = np.random.default_rng(stream)
        image = (render(scene, self.domain, rng) * 255 + 0.5).astype(np.uint8)
        sample = image, scene.label
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __repr__(self):
        return (f"SyntheticSegmentation(domain={self.domain!r}, split={self.split!r}, size={self.gen_size}, "
                f"num={self.num}, seed={self.seed})")
