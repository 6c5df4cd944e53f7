"""Procedural street-scene geometry for the embedded synthetic benchmark.

A pinhole camera (focal ``f`` px, horizon row ``yh``, vanishing column ``xv``, height ``cam_h`` m) looks
down a straight street: road, sidewalks, optional grass strips, facades of buildings / hedges / walls /
fences on both sides, an optional street end, and objects standing on the ground (cars, trucks, buses,
persons, poles with signs / traffic lights, trees). Everything is drawn with a z-buffer, so occlusion is
right. All random draws are in world units (metres) and independent of the resolution: the same
generator state gives the same scene at any (H, W). Output maps are consumed by :mod:`.synthetic`,
which turns them into images of one appearance domain.
"""

from dataclasses import dataclass

import numpy as np

# train ids used by the generator (see labels.CLASSES)
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, CAR, TRUCK, BUS = 11, 13, 14, 15
SCENE_CLASSES = (ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, CAR,
                 TRUCK, BUS)


@dataclass
class Scene:
    label: np.ndarray       # (H, W) uint8 train ids
    depth: np.ndarray       # (H, W) float32 metres along the optical axis, inf for sky
    inst: np.ndarray        # (H, W) int32 instance id (0 = none); appearance varies per instance
    shade: np.ndarray       # (H, W) float32 geometric detail: windows, markings, wheels (1 = plain)
    inst_class: np.ndarray  # (n_inst + 1,) train id of each instance
    horizon: float          # horizon row (px)


class Canvas:
    """Z-buffered label/depth/instance/shade maps plus the camera projection."""

    def __init__(self, H, W, f, yh, xv, cam_h):
        self.H, self.W, self.f, self.yh, self.xv, self.cam_h = H, W, f, yh, xv, cam_h
        self.label = np.full((H, W), SKY, np.uint8)
        self.depth = np.full((H, W), np.inf, np.float32)
        self.inst = np.zeros((H, W), np.int32)
        self.shade = np.ones((H, W), np.float32)
        self.ys = np.arange(H, dtype=np.float32) + 0.5
        self.xs = np.arange(W, dtype=np.float32) + 0.5
        self.inst_class = [0]

    def new_instance(self, cls):
        self.inst_class.append(cls)
        return len(self.inst_class) - 1

    def px(self, X, Z):
        return self.xv + self.f * X / Z

    def py(self, h, Z):
        return self.yh + self.f * (self.cam_h - h) / Z

    def _window(self, x0, x1, y0, y1):
        """Integer pixel window covering [x0, x1) x [y0, y1), or None when off-screen."""
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.W)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.H)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def write(self, win, mask, Z, cls, inst=0, shade=None):
        """Z-test ``mask`` (window-shaped) against the depth buffer and write; returns the drawn mask."""
        depth = self.depth[win]
        m = mask & (Z <= depth)
        if not m.any():
            return m
        self.label[win][m] = cls
        depth[m] = Z if np.ndim(Z) == 0 else np.broadcast_to(Z, m.shape)[m]
        self.inst[win][m] = inst
        if shade is None or np.ndim(shade) == 0:
            self.shade[win][m] = 1.0 if shade is None else shade
        else:
            self.shade[win][m] = np.broadcast_to(shade, m.shape)[m]
        return m

    def quad(self, Xb0, Xb1, Xt0, Xt1, h0, h1, Z, cls, inst=0, shade=None):
        """Camera-facing trapezoid at depth Z: [Xb0, Xb1] wide at height h0, [Xt0, Xt1] at h1."""
        yb, yt = self.py(h0, Z), self.py(h1, Z)
        xa = self.px(min(Xb0, Xt0), Z)
        xb = self.px(max(Xb1, Xt1), Z)
        win = self._window(xa, xb, yt, yb)
        if win is None:
            return None, None
        yy = self.ys[win[0], None]
        xx = self.xs[None, win[1]]
        t = np.clip((yb - yy) / max(yb - yt, 1e-6), 0, 1)
        left = self.px(Xb0 + t * (Xt0 - Xb0), Z)
        right = self.px(Xb1 + t * (Xt1 - Xb1), Z)
        mask = (yy >= yt) & (yy < yb) & (xx >= left) & (xx < right)
        return win, self.write(win, mask, Z, cls, inst, shade)

    def ellipse(self, Xc, hc, rx, ry, Z, cls, inst=0, wobble=(0.0, 0, 0.0)):
        """Camera-facing ellipse; ``wobble`` = (amplitude, lobes, phase) makes a ragged outline."""
        amp, lobes, phase = wobble
        s = self.f / Z
        cx, cy = self.px(Xc, Z), self.py(hc, Z)
        grow = 1 + abs(amp)
        win = self._window(cx - rx * s * grow, cx + rx * s * grow, cy - ry * s * grow, cy + ry * s * grow)
        if win is None:
            return None, None
        dx = (self.xs[None, win[1]] - cx) / (rx * s)
        dy = (self.ys[win[0], None] - cy) / (ry * s)
        r = np.sqrt(dx * dx + dy * dy)
        limit = 1 + amp * np.sin(lobes * np.arctan2(dy, dx) + phase) if amp else 1.0
        return win, self.write(win, r < limit, Z, cls, inst)

    def side_plane(self, X, Z0, Z1, h0, h1, cls, inst=0, top=None):
        """Vertical plane parallel to the street at lateral X, depth range [Z0, Z1), heights [h0, h1).

        ``top(Z)`` optionally perturbs the top height per depth (ragged hedges). Returns the window,
        the drawn mask and the per-pixel (Z, height) on the plane, for texturing (windows)."""
        x0, x1 = sorted((self.px(X, Z0), self.px(X, Z1)))
        win = self._window(x0, x1, 0, self.H)
        if win is None:
            return None, None, None, None
        xs = self.xs[win[1]]
        with np.errstate(divide="ignore", invalid="ignore"):
            Zc = (self.f * X / (xs - self.xv)).astype(np.float32)
        ok = (Zc >= Z0) & (Zc < Z1)
        Zc = np.where(ok, Zc, np.float32(1e9))
        ht = h1 + top(Zc) if top is not None else h1
        y_top, y_bot = self.py(ht, Zc), self.py(h0, Zc)
        yy = self.ys[:, None]
        mask = ok[None, :] & (yy >= y_top) & (yy < y_bot)
        m = self.write(win, mask, Zc[None, :], cls, inst)
        height = self.cam_h - (yy - self.yh) * Zc[None, :] / self.f
        return win, m, Zc, height


def _ragged(rng, amp):
    a, k, p = rng.uniform(0.3, 1.0, 2) * amp, rng.uniform(0.3, 1.5, 2), rng.uniform(0, 6.3, 2)
    return lambda Z: a[0] * np.sin(k[0] * Z + p[0]) + a[1] * np.sin(2.7 * k[1] * Z + p[1])


def _windows(rng):
    """Window pattern of one facade: dark glass on a (column spacing, floor height) grid."""
    sx, sy = rng.uniform(1.6, 3.5), rng.uniform(2.8, 3.6)
    fx, fy = rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.6)
    return lambda Z, h: np.where(((Z / sx) % 1 < fx) & ((h / sy) % 1 > 1 - fy) & (h > 2.2), 0.45, 1.0)


def _draw_ground(cv, rng, rl, rr, walk, grass):
    rows = slice(int(np.ceil(cv.yh)), cv.H)
    dy = cv.ys[rows, None] - cv.yh
    Z = (cv.f * cv.cam_h / dy).astype(np.float32)
    X = (cv.xs[None, :] - cv.xv) * cv.cam_h / dy
    lab = np.full(X.shape, TERRAIN, np.uint8)
    lab[(X > rl - walk[0]) & (X < rr + walk[1])] = SIDEWALK
    lab[(X > rl) & (X < rr)] = ROAD
    shade = np.ones(X.shape, np.float32)
    tile = rng.uniform(0.6, 1.0)
    walk_px = lab == SIDEWALK
    grout = (((Z / tile) % 1 < 0.08) | ((X / tile) % 1 < 0.08)) & walk_px
    shade[grout] = 0.8
    shade[walk_px & ((np.abs(X - rl) < 0.15) | (np.abs(X - rr) < 0.15))] = 0.7  # curb
    lines = [rl + 0.3, rr - 0.3] + ([(rl + rr) / 2] if rr - rl > 7 else [])
    dash = rng.uniform(3, 8)
    for i, xl in enumerate(lines):
        on = np.abs(X - xl) < 0.08
        if i == 2:
            on &= (Z / dash) % 1 < 0.5
        shade[on & (lab == ROAD)] = 2.6
    if rng.random() < 0.3:  # zebra crossing
        z0 = rng.uniform(6, 25)
        zebra = (Z > z0) & (Z < z0 + 3) & ((X / 0.5) % 1 < 0.5) & (lab == ROAD)
        shade[zebra] = 2.6
    cv.write((rows, slice(0, cv.W)), np.ones(X.shape, bool), Z, 0)
    cv.label[rows] = lab
    cv.shade[rows] = shade


def _draw_facades(cv, rng, X, z_end):
    Z = rng.uniform(0.3, 2.0)
    while Z < z_end:
        length = rng.uniform(6, 30) * (1 + Z / 60)  # far blocks longer: fewer sub-pixel segments
        kind = rng.choice(5, p=[0.6, 0.18, 0.08, 0.08, 0.06])
        if kind == 0:  # building with windows
            inst = cv.new_instance(BUILDING)
            pattern = _windows(rng)
            win, m, Zc, h = cv.side_plane(X, Z, Z + length, -1, rng.uniform(5, 30), BUILDING, inst)
            if win is not None:
                cv.shade[win][m] = np.broadcast_to(pattern(Zc[None, :], h), m.shape)[m]
        elif kind == 1:  # hedge / trees
            cv.side_plane(X, Z, Z + length, -1, rng.uniform(3, 10), VEG, cv.new_instance(VEG),
                          top=_ragged(rng, 1.5))
        elif kind in (2, 3):  # low wall or fence, sometimes with greenery behind
            cls, h = (WALL, rng.uniform(0.8, 2.2)) if kind == 2 else (FENCE, rng.uniform(1.0, 2.2))
            win, m, Zc, hh = cv.side_plane(X, Z, Z + length, -1, h, cls, cv.new_instance(cls))
            if cls == FENCE and win is not None:  # lattice
                lattice = ((Zc[None, :] / 0.3) % 1 < 0.3) | ((hh / 0.5) % 1 < 0.2)
                cv.shade[win][m] = np.where(lattice, 1.0, 0.55)[m]
            if rng.random() < 0.6:
                far = X * rng.uniform(1.1, 1.4)
                cv.side_plane(far, Z, Z + length, -1, rng.uniform(3, 9), VEG, cv.new_instance(VEG),
                              top=_ragged(rng, 1.2))
        Z += length


def _draw_street_end(cv, rng, z_end):
    X = -80.0
    while X < 80:
        w = rng.uniform(8, 25)
        if rng.random() < 0.75:
            inst = cv.new_instance(BUILDING)
            cv.quad(X, X + w, X, X + w, -1, rng.uniform(6, 35), z_end, BUILDING, inst)
        else:
            cv.ellipse(X + w / 2, 0, w / 2, rng.uniform(4, 10), z_end, VEG, cv.new_instance(VEG),
                       wobble=(0.08, 9, rng.uniform(0, 6)))
        X += w


def _draw_pole(cv, rng, X, Z, toward_road):
    h, w = rng.uniform(4, 9), rng.uniform(0.12, 0.25)
    cv.quad(X - w / 2, X + w / 2, X - w / 2, X + w / 2, 0, h, Z, POLE, cv.new_instance(POLE))
    kind = rng.choice(3, p=[0.45, 0.3, 0.25])
    if kind == 0:  # sign: disc, triangle or plate
        s, hs, shape = rng.uniform(0.5, 0.9), rng.uniform(2.0, min(h, 3.4)), rng.integers(3)
        inst = cv.new_instance(SIGN)
        if shape == 0:
            cv.ellipse(X, hs, s / 2, s / 2, Z - 0.05, SIGN, inst)
        else:
            top = (X - s / 2, X + s / 2) if shape == 2 else (X, X)
            cv.quad(X - s / 2, X + s / 2, top[0], top[1], hs - s / 2, hs + s / 2, Z - 0.05, SIGN, inst)
    elif kind == 1:  # traffic light box with three lamps
        inst = cv.new_instance(LIGHT)
        hb = h - rng.uniform(0, 0.5)
        win, m = cv.quad(X - 0.2, X + 0.2, X - 0.2, X + 0.2, hb - 1.0, hb, Z - 0.05, LIGHT, inst, 0.6)
        lit = rng.integers(3)
        cv.ellipse(X, hb - 0.2 - 0.3 * lit, 0.1, 0.1, Z - 0.06, LIGHT, inst)
        cv.shade[cv.inst == inst] = np.where(cv.depth[cv.inst == inst] < Z - 0.055, 2.5, 0.6)
    else:  # street light arm reaching over the road
        arm = rng.uniform(1.0, 2.5) * toward_road
        cv.quad(min(X, X + arm), max(X, X + arm), min(X, X + arm), max(X, X + arm), h - 0.15, h, Z,
                POLE, cv.new_instance(POLE))


def _draw_vehicle(cv, rng, X, Z, cls):
    inst = cv.new_instance(cls)
    if cls == CAR:
        w, h = rng.uniform(1.6, 1.95), rng.uniform(1.35, 1.65)
        cv.quad(X - 0.46 * w, X + 0.46 * w, X - 0.36 * w, X + 0.36 * w, 0.58 * h, h, Z, CAR, inst, 0.4)
        cv.quad(X - 0.5 * w, X + 0.5 * w, X - 0.5 * w, X + 0.5 * w, 0.25, 0.6 * h, Z, CAR, inst)
        for sx in (-1, 1):
            xl = X + sx * 0.36 * w
            cv.quad(xl - 0.08, xl + 0.08, xl - 0.08, xl + 0.08, 0.42 * h, 0.52 * h, Z - 0.01, CAR, inst, 2.2)
    else:
        if cls == TRUCK:
            w, h = rng.uniform(2.3, 2.5), rng.uniform(3.0, 3.8)
        else:
            w, h = 2.55, rng.uniform(3.0, 3.3)
        win, m = cv.quad(X - w / 2, X + w / 2, X - w / 2, X + w / 2, 0.35, h, Z, cls, inst)
        if win is not None:
            height = cv.cam_h - (cv.ys[win[0], None] - cv.yh) * Z / cv.f
            band = (height > 0.55 * h) & (height < 0.85 * h) if cls == BUS else height > 10 * h
            cv.shade[win][m] = np.broadcast_to(np.where(band, 0.4, 1.0), m.shape)[m]
    for sx in (-1, 1):  # wheels
        xw = X + sx * (0.5 * w - 0.22)
        cv.quad(xw - 0.16, xw + 0.16, xw - 0.16, xw + 0.16, 0, 0.4, Z + 0.01, cls, inst, 0.15)


def _draw_person(cv, rng, X, Z):
    inst, h = cv.new_instance(PERSON), rng.uniform(1.5, 1.9)
    stride = rng.uniform(0.0, 0.12)
    cv.ellipse(X, 0.93 * h, 0.075 * h, 0.065 * h, Z, PERSON, inst)
    cv.quad(X - 0.12 * h, X + 0.12 * h, X - 0.13 * h, X + 0.13 * h, 0.47 * h, 0.86 * h, Z, PERSON, inst)
    for sx in (-1, 1):
        x0 = X + sx * (0.05 * h + stride)
        cv.quad(x0 - 0.04 * h, x0 + 0.04 * h, X + sx * 0.075 * h - 0.04 * h, X + sx * 0.075 * h + 0.04 * h,
                0, 0.5 * h, Z, PERSON, inst, 0.6)


def make_scene(rng, H, W):
    """Draw one random street scene at resolution (H, W) from ``rng`` (np.random.Generator)."""
    f, yh = W * rng.uniform(0.55, 0.7), H * rng.uniform(0.36, 0.5)
    cv = Canvas(H, W, f, yh, W * rng.uniform(0.4, 0.6), rng.uniform(1.3, 1.8))
    road_w = rng.uniform(6, 14)
    rl = -rng.uniform(0.25, 0.75) * road_w
    rr = rl + road_w
    walk = rng.uniform(1.5, 4.0, 2)
    grass = np.where(rng.random(2) < 0.5, rng.uniform(1.0, 5.0, 2), 0.0)
    z_end = rng.uniform(50, 200) if rng.random() < 0.7 else 400.0
    _draw_ground(cv, rng, rl, rr, walk, grass)
    if z_end < 400:
        _draw_street_end(cv, rng, z_end)
    _draw_facades(cv, rng, rl - walk[0] - grass[0], z_end)
    _draw_facades(cv, rng, rr + walk[1] + grass[1], z_end)
    for side, edge in ((0, rl), (1, rr)):
        sgn = -1 if side == 0 else 1
        if grass[side] > 0 and rng.random() < 0.5:  # fence between sidewalk and grass
            z0 = rng.uniform(1, 20)
            cv.side_plane(edge + sgn * walk[side], z0, z0 + rng.uniform(10, 60), -1, rng.uniform(0.9, 1.6),
                          FENCE, cv.new_instance(FENCE))
        for _ in range(rng.integers(0, 4)):  # trees on the outer sidewalk / grass
            X = edge + sgn * (walk[side] * rng.uniform(0.6, 0.9) + grass[side] * rng.uniform(0, 1))
            Z, r = rng.uniform(5, 80), rng.uniform(1.2, 2.6)
            inst = cv.new_instance(VEG)
            cv.quad(X - 0.15, X + 0.15, X - 0.12, X + 0.12, 0, 2.6, Z, VEG, inst, 0.5)
            cv.ellipse(X, 2.4 + r, r, r * rng.uniform(0.8, 1.3), Z - 0.1, VEG, inst,
                       wobble=(0.12, rng.integers(5, 11), rng.uniform(0, 6.3)))
        for _ in range(rng.integers(1, 4)):
            X = edge + sgn * rng.uniform(0.3, 0.8) if rng.random() < 0.7 else edge + sgn * walk[side] * 0.9
            _draw_pole(cv, rng, X, rng.uniform(4, 70), -sgn)
    vehicles = [CAR] * int(rng.integers(1, 7))
    vehicles += [TRUCK] * int(rng.random() < 0.45)
    vehicles += [BUS] * int(rng.random() < 0.35)
    for cls in vehicles:
        margin = 1.3 if cls == CAR else 1.5
        X = rng.uniform(rl + margin, max(rr - margin, rl + margin + 0.1))
        _draw_vehicle(cv, rng, X, rng.uniform(5, 70), cls)
    for _ in range(rng.integers(0, 8)):
        side = rng.integers(2)
        edge, sgn = (rl, -1) if side == 0 else (rr, 1)
        X = edge + sgn * rng.uniform(0.3, walk[side]) if rng.random() < 0.8 else rng.uniform(rl, rr)
        _draw_person(cv, rng, X, rng.uniform(3, 40))
    return Scene(cv.label, cv.depth, cv.inst, cv.shade, np.array(cv.inst_class, np.int64), yh)
