"""Procedural street scenes in CamVid's 11-class label space, for demos and tests without downloads.

Each scene is rendered from a simple pinhole camera standing on a street: the ground, the two rows
of facades and a far cross street are ray-cast per pixel (so road marks, paving and windows shrink
with depth), then objects (trees, poles, signs, fences, cars, pedestrians, cyclists) are drawn with
OpenCV polygons from far to near. Colours are shared between classes on purpose (cars and
buildings take colours from one list, sky ranges from blue to grey, global light and colour cast
vary), so a model has to use shape and context, not one colour per class.

``generate_synthetic`` writes the scenes in CamVid's SegNet layout (``train/``, ``trainannot/``,
``val/``, ``valannot/``, ``train.txt``, ``val.txt``), so the CamVid dataset reads them unchanged.

Coordinates: world X to the right, Y up, Z forward (metres), camera at (0, camera height, 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ..checkpoint import atomic_write_bytes
from ..errors import DataError, LightsegError
from .classes import CAMVID_CLASSES

# Label values, in CAMVID_CLASSES order.
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
assert CAMVID_CLASSES[BICYCLIST] == "Bicyclist" and CAMVID_CLASSES[SIGN] == "SignSymbol"

GENERATOR_VERSION = 1  # bump when the rendered pixels change, so old marker files no longer match
MARKER_NAME = ".lightseg_synthetic.json"
_SPLIT_CODES = {"train": 0, "val": 1}  # seeds of the two splits differ in this word: disjoint streams
_STREAM_CODES = {**_SPLIT_CODES, "calibration": 2}  # + int8 calibration scenes (lightseg.deploy.quantize)

# RGB colours. Buildings, cars and clothes draw from overlapping lists so that colour alone
# does not give the class away.
_SHARED = [
    (225, 225, 220), (175, 178, 182), (120, 122, 126), (70, 72, 76), (150, 70, 55), (200, 180, 150),
    (60, 100, 170), (110, 125, 150), (205, 170, 90), (120, 85, 60), (40, 80, 50), (170, 30, 30),
]
_BUILDING_COLOURS = _SHARED + [(225, 215, 185), (210, 160, 150), (170, 185, 160), (150, 180, 210)]
_CAR_COLOURS = _SHARED + [(30, 30, 32), (30, 45, 100), (220, 190, 40)]
_CLOTHES = _SHARED + [(30, 30, 32), (30, 30, 60), (180, 40, 90), (230, 120, 40), (90, 60, 120)]
_SKIN = [(240, 200, 170), (210, 160, 120), (160, 110, 80), (100, 70, 50)]
_FOLIAGE = [(60, 90, 40), (80, 110, 50), (45, 70, 35), (110, 130, 60), (35, 55, 30), (140, 120, 50)]
_PAVING = [(150, 150, 145), (175, 165, 150), (160, 110, 100), (120, 120, 125), (190, 185, 175)]
_SKIES = [  # (top, horizon): clear blue, grey overcast, hazy white, dusk
    ((90, 140, 210), (190, 215, 240)), ((140, 145, 155), (195, 195, 200)),
    ((170, 180, 195), (225, 225, 225)), ((100, 110, 160), (230, 180, 140)), ((60, 100, 170), (160, 190, 220)),
]
_METAL = [(60, 62, 66), (110, 112, 116), (40, 70, 50), (150, 152, 156), (30, 30, 32)]


def _pick(rng, colours, jitter=12):
    """One colour from ``colours`` with a small random shift per channel."""
    c = np.asarray(colours[rng.integers(len(colours))], np.float32)
    return np.clip(c + rng.normal(0, jitter, 3), 0, 255)


def _tup(c):
    return tuple(int(round(float(v))) for v in c)


def _noise_tile(rng, size=64, blur=1.0):
    """A (size, size) float32 noise texture with zero mean and unit std."""
    t = rng.standard_normal((size, size)).astype(np.float32)
    if blur:
        t = cv2.GaussianBlur(t, (0, 0), blur, borderType=cv2.BORDER_REFLECT)
    return (t - t.mean()) / (t.std() + 1e-6)


def _sample(tile, u, v):
    """Bilinear sample of a wrapping square tile at texel coordinates (u, v) (arrays of one shape)."""
    n = tile.shape[0]
    shape = np.shape(u)
    count = int(np.prod(shape))
    cols = 1024  # cv2.remap needs both map dimensions below 32767: fold the points into rows
    pad = (-count) % cols
    maps = [np.pad(np.mod(np.ravel(c), n).astype(np.float32), (0, pad)).reshape(-1, cols) for c in (u, v)]
    out = cv2.remap(tile, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out.ravel()[:count].reshape(shape)


def _smooth_field(rng, shape, cells):
    """A smooth random field of ``shape`` made by bicubic upsampling of a ``cells`` grid of noise."""
    g = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(g, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _hash01(a, b):
    """A deterministic pseudo-random number in [0, 1) per integer pair (e.g. one per window)."""
    x = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return x - np.floor(x)


class _Camera:
    """Pinhole camera looking along +Z, standing ``height`` metres above the ground."""

    def __init__(self, f, cx, horizon, height):
        self.f, self.cx, self.horizon, self.height = f, cx, horizon, height

    def project(self, pts):
        """World points (N, 3) -> image points (N, 2) as float (x, y)."""
        pts = np.asarray(pts, np.float64)
        z = np.maximum(pts[:, 2], 0.05)
        u = self.cx + self.f * pts[:, 0] / z
        v = self.horizon + self.f * (self.height - pts[:, 1]) / z
        return np.stack([u, v], 1)

    def scale(self, z):
        """Pixels per metre at depth ``z``."""
        return self.f / max(z, 0.05)


class _Canvas:
    """An RGB uint8 image and its label drawn together; ``cls=None`` draws on the image only."""

    SHIFT = 4  # sub-pixel precision of cv2 drawing (coordinates * 16)

    def __init__(self, image, label, cam):
        self.image, self.label, self.cam = image, label, cam

    def _pts(self, pts):
        return np.round(np.asarray(pts, np.float64) * (1 << self.SHIFT)).astype(np.int32)

    def poly(self, pts, colour, cls=None):
        p = [self._pts(pts)]
        cv2.fillPoly(self.image, p, _tup(colour), cv2.LINE_AA, self.SHIFT)
        if cls is not None:
            cv2.fillPoly(self.label, p, int(cls), cv2.LINE_8, self.SHIFT)

    def world_poly(self, pts3d, colour, cls=None):
        self.poly(self.cam.project(pts3d), colour, cls)

    def circle(self, centre, radius, colour, cls=None, thickness=-1):
        c = tuple(int(v) for v in self._pts(centre))
        r = max(int(round(radius * (1 << self.SHIFT))), 1)
        t = thickness if thickness < 0 else max(int(round(thickness)), 1)
        cv2.circle(self.image, c, r, _tup(colour), t, cv2.LINE_AA, self.SHIFT)
        if cls is not None:
            cv2.circle(self.label, c, r, int(cls), t, cv2.LINE_8, self.SHIFT)

    def line(self, p0, p1, thickness, colour, cls=None):
        a, b = (tuple(int(v) for v in self._pts(p)) for p in (p0, p1))
        t = max(int(round(thickness)), 1)
        cv2.line(self.image, a, b, _tup(colour), t, cv2.LINE_AA, self.SHIFT)
        if cls is not None:
            cv2.line(self.label, a, b, int(cls), t, cv2.LINE_8, self.SHIFT)

    def shadow(self, pts3d, factor):
        """Darken the image inside a world polygon (the label stays what it is)."""
        h, w = self.label.shape
        p = self.cam.project(pts3d)
        x0, y0 = np.floor(p.min(0)).astype(int)
        x1, y1 = np.ceil(p.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
        if x0 >= x1 or y0 >= y1:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [self._pts(p - [x0, y0])], 255, cv2.LINE_AA, self.SHIFT)
        roi = self.image[y0:y1, x0:x1].astype(np.float32)
        k = 1.0 - (1.0 - factor) * (mask[..., None] / 255.0)
        self.image[y0:y1, x0:x1] = np.clip(roi * k, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ scene layout
def _facade_row(rng, z_start, z_end, kind_weights, min_h, max_h):
    """Buildings (or gaps, or tree rows) side by side along one line from z_start to z_end."""
    rows = []
    z = z_start
    while z < z_end:
        width = rng.uniform(6.0, 22.0)
        kind = rng.choice(["building", "gap", "trees"], p=kind_weights)
        rows.append(dict(
            start=z, end=z + width, kind=kind,
            height=rng.uniform(min_h, max_h) if kind == "building" else rng.uniform(4.0, 9.0),
            colour=_pick(rng, _BUILDING_COLOURS, 10) if kind == "building" else _pick(rng, _FOLIAGE, 8),
            glass=_pick(rng, [(40, 50, 70), (70, 90, 110), (25, 30, 35), (110, 130, 150)], 8),
            win_sx=rng.uniform(1.8, 3.5), win_sy=rng.uniform(2.8, 3.6),
            win_fx=rng.uniform(0.35, 0.65), win_fy=rng.uniform(0.35, 0.6),
            ground=rng.uniform(3.0, 4.2), shop=rng.random() < 0.5, brick=rng.random() < 0.35,
            shop_colour=_pick(rng, _SHARED, 20),
        ))
        z += width
    return rows


def _row_arrays(rows):
    keys = ("start", "end", "height", "win_sx", "win_sy", "win_fx", "win_fy", "ground")
    a = {k: np.array([r[k] for r in rows], np.float32) for k in keys}
    a["kind"] = np.array([{"building": 0, "gap": 1, "trees": 2}[r["kind"]] for r in rows])
    a["shop"] = np.array([r["shop"] for r in rows])
    a["brick"] = np.array([r["brick"] for r in rows])
    for k in ("colour", "glass", "shop_colour"):
        a[k] = np.array([r[k] for r in rows], np.float32)
    return a


def _make_layout(rng, size):
    h, w = size
    cam = _Camera(f=w * rng.uniform(0.7, 1.0), cx=w * rng.uniform(0.32, 0.68),
                  horizon=h * rng.uniform(0.36, 0.5), height=rng.uniform(1.3, 1.7))
    lanes = int(rng.integers(2, 5))
    lane_w = rng.uniform(3.0, 3.6)
    offset = rng.uniform(0.15, 0.85)  # where the camera sits across the road
    road_l = -lanes * lane_w * offset
    road_r = road_l + lanes * lane_w
    lay = dict(cam=cam, lanes=lanes, lane_w=lane_w, road_l=road_l, road_r=road_r,
               z_near=cam.height * cam.f / (h - cam.horizon))
    for side, sign in (("left", -1), ("right", 1)):
        edge = road_l if sign < 0 else road_r
        pave = rng.uniform(2.5, 6.0)
        open_side = rng.random() < 0.25  # no facade along the pavement: verge, trees, far buildings
        if open_side:
            fx = edge + sign * (pave + rng.uniform(8.0, 25.0))
            rows = _facade_row(rng, 0.5, 400.0, [0.5, 0.2, 0.3], 5.0, 14.0)
        else:
            fx = edge + sign * pave
            rows = _facade_row(rng, 0.5, 400.0, [0.82, 0.1, 0.08], 6.0, 26.0)
        lay[side] = dict(x=fx, pave_edge=edge + sign * pave, edge=edge, open=open_side, rows=rows,
                         arrays=_row_arrays(rows), paving=_pick(rng, _PAVING, 8))
    lay["end_z"] = rng.uniform(45.0, 140.0)
    end_rows = _facade_row(rng, -300.0, 300.0, [0.6, 0.15, 0.25], 6.0, 30.0)
    lay["end"] = dict(rows=end_rows, arrays=_row_arrays(end_rows))
    return lay


# ------------------------------------------------------------------ per-pixel background
def _shade_facade(a, idx, s, t, tex, rng_tile):
    """Colours (N, 3) and labels (N,) of facade points: row index, along-facade s, height t (m)."""
    colour = a["colour"][idx].copy()
    label = np.full(idx.shape, BUILDING, np.uint8)
    noise = _sample(tex, s * 6.0, t * 6.0)[:, None]
    colour *= 1.0 + 0.06 * noise
    brick = a["brick"][idx] & (np.mod(t, 0.15) < 0.025)
    colour[brick] *= 0.8
    # Windows: a grid of floors and bays; each window has its own brightness (lit / dark / reflecting).
    sx, sy = a["win_sx"][idx], a["win_sy"][idx]
    bay, floor = np.floor(s / sx), np.floor((t - a["ground"][idx]) / sy)
    fx = np.mod(s, sx) / sx
    fy = np.mod(t - a["ground"][idx], sy) / sy
    width = a["end"][idx] - a["start"][idx]
    in_window = ((fx > 0.5 - a["win_fx"][idx] / 2) & (fx < 0.5 + a["win_fx"][idx] / 2)
                 & (fy > 0.3) & (fy < 0.3 + a["win_fy"][idx])
                 & (t > a["ground"][idx]) & (t < a["height"][idx] - 1.0) & (s > 0.8) & (s < width - 0.8))
    glass = a["glass"][idx] * (0.7 + 0.6 * _hash01(bay, floor))[:, None]
    glass *= (1.15 - 0.35 * fy)[:, None]  # reflections brighter at the top of each pane
    frame = in_window & ((np.abs(fx - 0.5) > a["win_fx"][idx] / 2 - 0.03) | (np.abs(fy - 0.3 - a["win_fy"][idx] / 2) < 0.02))
    colour[in_window] = glass[in_window]
    colour[frame] = colour[frame] * 0.4 + 140
    # Ground floor: shop windows under a coloured fascia, or a darker plinth.
    shop = a["shop"][idx] & (t < a["ground"][idx])
    shop_glass = shop & (t > 0.4) & (t < a["ground"][idx] - 0.9) & (np.mod(s, 4.0) > 0.4) & (np.mod(s, 4.0) < 3.6)
    fascia = shop & (t > a["ground"][idx] - 0.8) & (t < a["ground"][idx] - 0.2)
    colour[shop_glass] = a["glass"][idx][shop_glass] * 0.8 + 15 * noise[shop_glass]
    colour[fascia] = a["shop_colour"][idx][fascia]
    plinth = ~a["shop"][idx] & (t < 0.6)
    colour[plinth] *= 0.7
    cornice = t > a["height"][idx] - 0.4
    colour[cornice] *= 0.75
    # Tree rows (kind 2): leafy texture with a ragged top edge.
    trees = a["kind"][idx] == 2
    if trees.any():
        leaf = _sample(rng_tile, s[trees] * 4.0, t[trees] * 4.0)
        colour[trees] = a["colour"][idx][trees] * (0.75 + 0.25 * leaf)[:, None]
        label[trees] = TREE
    return colour, label


def _facade_hits(a, plane, along, up):
    """Which points of a plane (given along / up coordinates, m) hit a building or a tree row."""
    idx = np.clip(np.searchsorted(a["start"], along, side="right") - 1, 0, len(a["start"]) - 1)
    kind = a["kind"][idx]
    top = a["height"][idx]
    # Tree rows get a ragged crown line instead of a flat roof.
    top = np.where(kind == 2, top + 0.8 * np.sin(along * 1.7) + 0.5 * np.sin(along * 4.3 + 1.0), top)
    hit = plane & (along >= a["start"][idx]) & (along < a["end"][idx]) & (kind != 1) & (up >= 0) & (up <= top)
    return hit, idx


def _render_background(rng, lay, size):
    """Ray-cast ground, facades, far cross street and sky: float32 image (H, W, 3) and label (H, W)."""
    h, w = size
    cam = lay["cam"]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dx = (xs - cam.cx) / cam.f
    dy = (cam.horizon - ys) / cam.f  # > 0 above the horizon
    far = np.float32(1e6)
    tex = _noise_tile(rng, 64, 0.8)
    leaf_tex = _noise_tile(rng, 64, 1.2)
    image = np.zeros((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)
    depth = np.full((h, w), far, np.float32)

    # The ground is hit by every ray below the horizon: rows r0.. (each view below is a slice).
    r0 = min(int(np.ceil(cam.horizon + 0.5)), h)
    if r0 < h:
        zg = cam.height / -dy[r0:]
        depth[r0:] = zg
        _shade_ground(rng, lay, image[r0:], label[r0:], dx[r0:] * zg, zg, tex, leaf_tex)
    sky = depth >= far

    # Facades: the left one is seen only left of the vanishing point, the right one only right of it.
    c = int(np.clip(np.floor(cam.cx), 0, w))
    regions = [("left", np.s_[:, :c]), ("right", np.s_[:, c:])]
    for side, region in regions:
        s = lay[side]
        rdx, rdy = dx[region], dy[region]
        plane = (rdx * np.sign(s["x"])) > 1e-5
        z = np.where(plane, s["x"] / np.where(plane, rdx, 1.0), far)
        _paint_facade(s["arrays"], plane, z, z, cam.height + rdy * z, region, image, label, depth, sky, tex, leaf_tex)
    # The far cross street: a row of front-facing buildings at depth end_z.
    ze = lay["end_z"]
    a = lay["end"]["arrays"]
    top = cam.horizon - cam.f * (a["height"].max() + 1.5 - cam.height) / ze  # image rows it can cover
    bottom = cam.horizon + cam.f * cam.height / ze
    rows = np.s_[int(np.clip(top, 0, h)):int(np.clip(bottom + 1, 0, h)), :]
    xe, ye = dx[rows] * ze, cam.height + dy[rows] * ze
    plane = (xe > lay["left"]["x"]) & (xe < lay["right"]["x"])
    _paint_facade(a, plane, np.full_like(xe, ze), xe, ye, rows, image, label, depth, sky, tex, leaf_tex)
    _shade_sky(rng, image, label, sky, ys, cam.horizon)
    # Haze: far surfaces fade towards a light grey.
    fog = np.clip((depth - 40.0) / 400.0, 0, 0.45) * (depth < far)
    haze = np.float32(rng.uniform(170, 215))
    image += fog[..., None] * (haze - image)
    return image, label


def _paint_facade(a, plane, z, along, up, region, image, label, depth, sky, tex, leaf_tex):
    """Shade the points of one facade plane (inside ``region``) that are nearer than ``depth``."""
    hit, idx = _facade_hits(a, plane, along, up)
    take = hit & (z < depth[region])
    if not take.any():
        return
    depth[region] = np.where(take, z, depth[region])
    sky[region] &= ~take
    colour, cls = _shade_facade(a, idx[take], (along - a["start"][idx])[take], up[take], tex, leaf_tex)
    image[region][take] = colour
    label[region][take] = cls


def _shade_ground(rng, lay, image, label, x, z, tex, leaf_tex):
    """Road, lane marks, pavements and verges of the rows below the horizon (x, z: ground point, m)."""
    left, right = lay["left"], lay["right"]
    # Zones across the street, left to right: verge/alley, pavement, road, pavement, verge/alley.
    edges = np.array([left["pave_edge"], lay["road_l"], lay["road_r"], right["pave_edge"]], np.float32)
    zone = np.searchsorted(edges, x)
    asphalt = _pick(rng, [(95, 95, 98), (80, 80, 85), (115, 112, 108), (130, 130, 132), (70, 72, 78)], 6)
    verge = []
    zone_label = []
    for s in (left, right):  # open sides have a grass verge (CamVid counts low vegetation as Tree)
        verge.append(_pick(rng, [(80, 120, 50), (100, 130, 60), (70, 95, 45)], 8) if s["open"] else s["paving"] * 0.85)
        zone_label.append(TREE if s["open"] else PAVEMENT)
    colours = np.array([verge[0], left["paving"], asphalt, right["paving"], verge[1]], np.float32)
    label[:] = np.array([zone_label[0], PAVEMENT, ROAD, PAVEMENT, zone_label[1]], np.uint8)[zone]

    grain = _sample(tex, x * 20.0, z * 20.0)
    shade = 1 + 0.06 * grain
    road = zone == 2
    shade += np.where(road, 0.07 * _sample(tex, x * 0.7 + 17, z * 0.35 + 5), 0)  # repaired patches
    tile = np.float32(rng.uniform(0.3, 0.8))
    joints = ((zone == 1) | (zone == 3)) & ((np.mod(x, tile) < 0.03) | (np.mod(z, tile) < 0.03))
    shade[joints] *= 0.8
    for zn, s in ((0, left), (4, right)):
        if s["open"]:
            grass = zone == zn
            shade[grass] = 0.8 + 0.12 * _sample(leaf_tex, x[grass] * 8, z[grass] * 8)
    image[:] = colours[zone] * shade[..., None]
    kerb = (np.abs(x - lay["road_l"]) < 0.25) & (zone == 1) | (np.abs(x - lay["road_r"]) < 0.25) & (zone == 3)
    image[kerb] = image[kerb] * 0.5 + 100
    # Lane marks: dashed between lanes, solid near the kerbs, sometimes a zebra crossing; worn paint.
    paint = np.zeros(x.shape, bool)
    phase, dash, gap = rng.uniform(0, 12), rng.uniform(2.0, 4.0), rng.uniform(4.0, 9.0)
    for k in range(1, lay["lanes"]):
        bx = lay["road_l"] + k * lay["lane_w"]
        near = np.abs(x - bx) < 0.07
        paint[near] |= np.mod(z[near] + phase, dash + gap) < dash
    if rng.random() < 0.7:
        paint |= (np.abs(x - lay["road_l"] - 0.3) < 0.07) | (np.abs(x - lay["road_r"] + 0.3) < 0.07)
    if rng.random() < 0.3:
        zc = rng.uniform(lay["z_near"] + 2, 25.0)
        paint |= road & (z > zc) & (z < zc + 3.5) & (np.mod(x, 1.0) < 0.5)
    paint &= road & (grain > -1.2)
    image[paint] = _pick(rng, [(215, 215, 210), (225, 200, 90)], 8) * (0.9 + 0.05 * grain[paint])[:, None]


def _shade_sky(rng, image, label, sky, ys, horizon):
    """Vertical gradient from a blue, grey, white or dusk sky, with soft clouds."""
    top, bottom = _SKIES[rng.integers(len(_SKIES))]
    top = np.clip(np.asarray(top, np.float32) + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    bottom = np.clip(np.asarray(bottom, np.float32) + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    h, w = sky.shape
    cover = (_smooth_field(rng, (h, w), (3, 5)) + 0.5 * _smooth_field(rng, (h, w), (7, 12)))[sky]
    threshold = rng.uniform(-0.5, 1.5)
    cloud_grey = np.float32(rng.uniform(170, 245))
    frac = (np.clip(ys[sky] / max(horizon, 1.0), 0, 1) ** 0.7)[:, None]
    colour = top * (1 - frac) + bottom * frac
    clouds = np.clip((cover - threshold) * 1.5, 0, 1)[:, None]
    image[sky] = colour * (1 - clouds) + (cloud_grey * (0.9 + 0.1 * np.tanh(cover)))[:, None] * clouds
    label[sky] = SKY


# ------------------------------------------------------------------ objects
def _draw_car(cv, rng, x, z, lay):
    w, length = rng.uniform(1.6, 2.0), rng.uniform(3.8, 4.9)
    height = rng.uniform(1.35, 1.6)
    van = rng.random() < 0.15
    if van:
        length, height, w = rng.uniform(5.0, 9.0), rng.uniform(2.1, 3.0), rng.uniform(2.0, 2.5)
    body = _pick(rng, _CAR_COLOURS, 10)
    dark, glass = body * 0.55, _pick(rng, [(30, 35, 45), (60, 70, 85), (20, 22, 25)], 6)
    belt = 0.55 * height if not van else 0.45 * height
    xl, xr = x - w / 2, x + w / 2
    cv.shadow([(xl - 0.2, 0, z - 0.3), (xr + 0.2, 0, z - 0.3), (xr + 0.2, 0, z + length + 0.3), (xl - 0.2, 0, z + length + 0.3)], 0.45)
    # The side facing the camera, then the roof (when the camera is above it), then the near face.
    xs = xl if x > 0 else xr
    zc0, zc1 = (z + 0.3 * length, z + 0.78 * length) if not van else (z + 0.05, z + length)
    cv.world_poly([(xs, 0.25, z), (xs, belt, z), (xs, belt, z + length), (xs, 0.25, z + length)], body, CAR)
    cabin = [(xs, belt, z + 0.12 * length if not van else z), (xs, height, zc0), (xs, height, zc1),
              (xs, belt, z + 0.95 * length if not van else z + length)]
    cv.world_poly(cabin, body * 0.95, CAR)
    if not van:
        inset = [(xs, belt + 0.05, z + 0.2 * length), (xs, height - 0.06, zc0 + 0.05), (xs, height - 0.06, zc1 - 0.05),
                 (xs, belt + 0.05, z + 0.88 * length)]
        cv.world_poly(inset, glass, CAR)
    for wz in (z + 0.18 * length, z + 0.8 * length):
        ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        r = 0.33
        pts = [(xs, 0.33 + r * np.sin(a), wz + r * np.cos(a)) for a in ang]
        cv.world_poly(pts, (25, 25, 25), CAR)
        cv.world_poly([(xs, 0.33 + 0.15 * np.sin(a), wz + 0.15 * np.cos(a)) for a in ang], (120, 120, 120), CAR)
    if cv.cam.height > height:
        cv.world_poly([(xl + 0.1, height, zc0), (xr - 0.1, height, zc0), (xr - 0.1, height, zc1), (xl + 0.1, height, zc1)], body * 1.05, CAR)
    # Near face: body, cabin with the rear (or front) window, lights, plate, tyres.
    front = rng.random() < 0.3
    cv.world_poly([(xl, 0.25, z), (xr, 0.25, z), (xr, belt, z), (xl, belt, z)], body, CAR)
    top_in = 0.12 if not van else 0.02
    cv.world_poly([(xl + 0.05, belt, z), (xr - 0.05, belt, z), (xr - top_in, height, z), (xl + top_in, height, z)], body * 0.95, CAR)
    cv.world_poly([(xl + 0.15, belt + 0.06, z), (xr - 0.15, belt + 0.06, z), (xr - top_in - 0.08, height - 0.07, z),
                   (xl + top_in + 0.08, height - 0.07, z)], glass, CAR)
    lamp = (235, 235, 210) if front else (200, 30, 30)
    for lx in (xl + 0.08, xr - 0.38):
        cv.world_poly([(lx, belt - 0.22, z), (lx + 0.3, belt - 0.22, z), (lx + 0.3, belt - 0.05, z), (lx, belt - 0.05, z)], lamp, CAR)
    cv.world_poly([(xl, 0.2, z), (xr, 0.2, z), (xr, 0.38, z), (xl, 0.38, z)], dark, CAR)
    cv.world_poly([(x - 0.26, 0.42, z), (x + 0.26, 0.42, z), (x + 0.26, 0.54, z), (x - 0.26, 0.54, z)],
                  (230, 230, 225) if rng.random() < 0.7 else (230, 200, 60), CAR)
    for tx in (xl + 0.05, xr - 0.3):
        cv.world_poly([(tx, 0.0, z + 0.1), (tx + 0.25, 0.0, z + 0.1), (tx + 0.25, 0.3, z + 0.1), (tx, 0.3, z + 0.1)], (25, 25, 25), CAR)


def _draw_person(cv, rng, u, v, s, cls=PEDESTRIAN):
    """A standing or walking person with feet at image point (u, v), ``s`` pixels per metre."""
    hgt = rng.uniform(1.55, 1.9) * s
    top, legs, skin = _pick(rng, _CLOTHES, 15), _pick(rng, _CLOTHES, 15), _pick(rng, _SKIN, 8)
    side = rng.random() < 0.5
    hip = v - 0.5 * hgt
    stride = rng.uniform(0.05, 0.17) * hgt if side else rng.uniform(0.02, 0.06) * hgt
    lw = 0.075 * hgt
    for d in (-1, 1):
        foot = u + d * stride
        hx = u + d * (0.0 if side else 0.045 * hgt)
        cv.poly([(hx - lw / 2, hip), (hx + lw / 2, hip), (foot + lw / 2, v), (foot - lw / 2, v)], legs, cls)
        cv.poly([(foot - lw / 2, v - 0.03 * hgt), (foot + lw / 2 + 0.04 * hgt * (d if side else 0), v - 0.03 * hgt),
                 (foot + lw / 2, v), (foot - lw / 2, v)], (30, 30, 30), cls)
    half_sh, half_hip = (0.09, 0.08) if side else (0.13, 0.1)
    coat = rng.random() < 0.3
    bottom = hip + (0.2 * hgt if coat else 0.02 * hgt)
    cv.poly([(u - half_sh * hgt, v - 0.81 * hgt), (u + half_sh * hgt, v - 0.81 * hgt),
             (u + half_hip * hgt, bottom), (u - half_hip * hgt, bottom)], top, cls)
    arm = 0.055 * hgt
    for d in (-1, 1):
        sx = u + d * (0.02 if side else half_sh) * hgt
        hand = (u + d * (0.12 if side else 0.16) * hgt, v - 0.47 * hgt)
        cv.line((sx, v - 0.79 * hgt), hand, arm, top * 0.9, cls)
        cv.circle(hand, arm * 0.55, skin, cls)
    cv.poly([(u - 0.03 * hgt, v - 0.81 * hgt), (u + 0.03 * hgt, v - 0.81 * hgt), (u + 0.03 * hgt, v - 0.86 * hgt),
             (u - 0.03 * hgt, v - 0.86 * hgt)], skin, cls)
    cv.circle((u, v - 0.91 * hgt), 0.065 * hgt, skin, cls)
    cv.circle((u, v - 0.93 * hgt), 0.06 * hgt, _pick(rng, [(30, 20, 15), (90, 60, 30), (200, 170, 110), (120, 120, 120)], 8), cls)
    if rng.random() < 0.25:  # a bag
        cv.poly([(u + 0.1 * hgt, v - 0.55 * hgt), (u + 0.22 * hgt, v - 0.55 * hgt), (u + 0.22 * hgt, v - 0.4 * hgt),
                 (u + 0.1 * hgt, v - 0.4 * hgt)], _pick(rng, _CLOTHES, 10), cls)


def _draw_cyclist(cv, rng, u, v, s):
    """A rider on a bicycle seen from the side (CamVid labels rider and bicycle as Bicyclist)."""
    d = 1 if rng.random() < 0.5 else -1
    r = 0.34 * s
    frame = _pick(rng, _CLOTHES, 15)
    tyre = max(0.05 * s, 1)
    rear, fore = (u - d * 0.52 * s, v - r), (u + d * 0.52 * s, v - r)
    crank, seat, bar = (u - d * 0.05 * s, v - 0.3 * s), (u - d * 0.2 * s, v - 0.95 * s), (u + d * 0.42 * s, v - 1.05 * s)
    for c in (rear, fore):
        cv.circle(c, r, (25, 25, 25), BICYCLIST, tyre * 1.6)
        cv.circle(c, r * 0.8, (150, 150, 150), None, max(tyre * 0.3, 1))
    bar_w = max(0.04 * s, 1)
    for a, b in ((rear, crank), (crank, seat), (seat, rear), (crank, (fore[0] - d * 0.1 * s, v - 0.85 * s)),
                 (seat, (fore[0] - d * 0.1 * s, v - 0.85 * s)), ((fore[0] - d * 0.1 * s, v - 0.85 * s), fore),
                 ((fore[0] - d * 0.1 * s, v - 0.85 * s), bar)):
        cv.line(a, b, bar_w, frame, BICYCLIST)
    top, legs, skin = _pick(rng, _CLOTHES, 15), _pick(rng, _CLOTHES, 15), _pick(rng, _SKIN, 8)
    shoulder = (u + d * 0.12 * s, v - 1.5 * s)
    knee = (u + d * 0.15 * s, v - 0.65 * s)
    cv.line(seat, knee, 0.13 * s, legs, BICYCLIST)
    cv.line(knee, (crank[0] + d * 0.08 * s, v - 0.18 * s), 0.11 * s, legs, BICYCLIST)
    cv.line((seat[0], seat[1] - 0.05 * s), shoulder, 0.3 * s, top, BICYCLIST)
    cv.line(shoulder, bar, 0.08 * s, top * 0.9, BICYCLIST)
    cv.circle((shoulder[0] + d * 0.07 * s, shoulder[1] - 0.2 * s), 0.11 * s, skin, BICYCLIST)
    if rng.random() < 0.5:  # helmet
        cv.circle((shoulder[0] + d * 0.07 * s, shoulder[1] - 0.24 * s), 0.1 * s, _pick(rng, _CLOTHES, 10), BICYCLIST)


def _draw_tree(cv, rng, x, z):
    trunk_h, r = rng.uniform(1.8, 4.0), rng.uniform(1.3, 3.2)
    tw = rng.uniform(0.2, 0.4)
    bark = _pick(rng, [(90, 70, 50), (70, 60, 55), (110, 100, 90)], 8)
    cv.world_poly([(x - tw / 2, 0, z), (x + tw / 2, 0, z), (x + tw / 3, trunk_h + r * 0.5, z), (x - tw / 3, trunk_h + r * 0.5, z)], bark, TREE)
    leaf = _pick(rng, _FOLIAGE, 10)
    s = cv.cam.scale(z)
    centre = cv.cam.project([(x, trunk_h + r, z)])[0]
    blobs = int(rng.integers(5, 11))
    offs = rng.normal(0, 0.45, (blobs, 2)) * r
    for (ox, oy), k in zip(offs, rng.uniform(0.45, 0.75, blobs)):
        cv.circle(centre + np.array([ox, oy]) * s, k * r * s, leaf * rng.uniform(0.75, 1.15), TREE)
    # Leaf clumps: small light and dark spots inside the crown (image only: the label stays Tree).
    spots = int(min(30, (r * s) ** 2 / 8))
    for _ in range(spots):
        o = rng.normal(0, 0.4, 2) * r
        cv.circle(centre + o * s, max(rng.uniform(0.08, 0.2) * r * s, 1), leaf * rng.uniform(0.6, 1.3), None)


def _draw_pole(cv, rng, x, z, lamp_dir):
    height, pw = rng.uniform(5.5, 9.0), rng.uniform(0.14, 0.24)
    metal = _pick(rng, _METAL, 8)
    cv.world_poly([(x - pw / 2, 0, z), (x + pw / 2, 0, z), (x + pw / 3, height, z), (x - pw / 3, height, z)], metal, POLE)
    if lamp_dir:  # a street lamp: an arm over the road and a lamp head
        arm = rng.uniform(1.0, 2.2) * lamp_dir
        cv.world_poly([(x, height - 0.12, z), (x + arm, height - 0.05, z), (x + arm, height + 0.05, z), (x, height, z)], metal, POLE)
        cv.world_poly([(x + arm - 0.3, height - 0.15, z), (x + arm + 0.3, height - 0.15, z), (x + arm + 0.25, height, z),
                       (x + arm - 0.25, height, z)], metal * 1.2, POLE)


def _draw_sign(cv, rng, x, z):
    height, pw = rng.uniform(2.4, 3.4), rng.uniform(0.07, 0.12)
    metal = _pick(rng, _METAL, 8)
    size = rng.uniform(0.7, 1.1)
    kind = rng.choice(["circle", "triangle", "rect", "lights"])
    if kind == "lights":
        height += 0.5
    cv.world_poly([(x - pw / 2, 0, z), (x + pw / 2, 0, z), (x + pw / 2, height, z), (x - pw / 2, height, z)], metal, POLE)
    s = cv.cam.scale(z)
    c = cv.cam.project([(x, height, z)])[0]
    half = size * s / 2
    if kind == "circle":
        rim = _pick(rng, [(200, 30, 30), (30, 70, 170)], 10)
        cv.circle(c, half, rim, SIGN)
        cv.circle(c, half * 0.75, (235, 235, 235) if rim[0] > 100 else rim * 1.2, SIGN)
        cv.line((c[0] - half * 0.4, c[1]), (c[0] + half * 0.4, c[1]), max(half * 0.15, 1), (30, 30, 30), None)
    elif kind == "triangle":
        tri = [(c[0], c[1] - half), (c[0] + half, c[1] + half * 0.8), (c[0] - half, c[1] + half * 0.8)]
        cv.poly(tri, (200, 30, 30), SIGN)
        inner = [(c[0], c[1] - half * 0.55), (c[0] + half * 0.6, c[1] + half * 0.5), (c[0] - half * 0.6, c[1] + half * 0.5)]
        cv.poly(inner, (235, 230, 220), SIGN)
    elif kind == "rect":
        colour = _pick(rng, [(30, 70, 170), (30, 110, 60), (235, 235, 235), (220, 190, 40)], 10)
        cv.poly([(c[0] - half * 1.2, c[1] - half * 0.7), (c[0] + half * 1.2, c[1] - half * 0.7),
                 (c[0] + half * 1.2, c[1] + half * 0.7), (c[0] - half * 1.2, c[1] + half * 0.7)], colour, SIGN)
        for k in (-0.3, 0.1):  # lines of "text"
            cv.line((c[0] - half * 0.8, c[1] + k * half), (c[0] + half * 0.7, c[1] + k * half), max(half * 0.12, 1),
                    (240, 240, 240) if colour.mean() < 150 else (30, 30, 30), None)
    else:  # traffic lights (CamVid labels them SignSymbol)
        box = [(c[0] - half * 0.35, c[1] - half), (c[0] + half * 0.35, c[1] - half), (c[0] + half * 0.35, c[1] + half),
               (c[0] - half * 0.35, c[1] + half)]
        cv.poly(box, _pick(rng, [(25, 25, 25), (200, 170, 40)], 6), SIGN)
        lit = int(rng.integers(3))
        for i, col in enumerate([(230, 40, 30), (240, 170, 30), (40, 210, 90)]):
            cv.circle((c[0], c[1] + (i - 1) * half * 0.6), half * 0.22, col if i == lit else np.asarray(col) * 0.3, SIGN)


def _draw_fence(cv, rng, x, z0, z1):
    height = rng.uniform(0.9, 1.8)
    kind = rng.choice(["panel", "railing", "mesh"])
    colour = _pick(rng, [(120, 90, 60), (150, 120, 90), (70, 72, 76), (40, 70, 50), (200, 200, 195)], 10)
    quad = [(x, 0, z0), (x, height, z0), (x, height, z1), (x, 0, z1)]
    if kind == "panel":
        cv.world_poly(quad, colour, FENCE)
        step = 0.15
    else:
        # Rails and a light infill: the background shows through, the whole fence is labelled Fence.
        p = cv.cam.project(quad)
        cv.shadow(quad, 0.8)
        mask = np.zeros_like(cv.label)
        cv2.fillPoly(mask, [cv._pts(p)], 1, cv2.LINE_8, cv.SHIFT)
        cv.label[mask.astype(bool)] = FENCE
        for y in (height * 0.1, height * 0.55, height * 0.95):
            cv.world_poly([(x, y - 0.04, z0), (x, y + 0.04, z0), (x, y + 0.04, z1), (x, y - 0.04, z1)], colour, FENCE)
        step = 0.12 if kind == "mesh" else 0.3
    # Vertical boards / bars, skipped where they would be closer than 2 px.
    zs = np.arange(z0, z1, step)
    us = cv.cam.project([(x, 0, zz) for zz in zs])[:, 0]
    last = None
    for zz, uu in zip(zs, us):
        if last is not None and abs(uu - last) < 2.5:
            continue
        last = uu
        a, b = cv.cam.project([(x, 0, zz), (x, height, zz)])
        cv.line(a, b, max(0.04 * cv.cam.scale(zz), 1), colour * 0.7, FENCE)
    for zz in np.arange(z0, z1, 2.5):  # posts
        a, b = cv.cam.project([(x, 0, zz), (x, height + 0.05, zz)])
        cv.line(a, b, max(0.1 * cv.cam.scale(zz), 1), colour * 0.6, FENCE)


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place_objects(rng, lay):
    """A list of (depth, draw function) for every object of the scene."""
    cam = lay["cam"]
    z_min = lay["z_near"] * 1.05
    items = []
    lanes = [lay["road_l"] + (k + 0.5) * lay["lane_w"] for k in range(lay["lanes"])]
    taken = {}  # lane x -> list of (z0, z1) occupied

    def free(x, z0, z1):
        return all(z1 + 1.5 < a or z0 > b + 1.5 for a, b in taken.get(round(x, 2), []))

    def add_car(x, z):
        if free(x, z, z + 5.0):
            taken.setdefault(round(x, 2), []).append((z, z + 5.0))
            items.append((z, lambda cv, r, x=x, z=z: _draw_car(cv, r, x, z, lay)))

    for _ in range(int(rng.integers(1, 6))):
        add_car(lanes[rng.integers(len(lanes))] + rng.normal(0, 0.2), _log_uniform(rng, z_min + 1.0, 70.0))
    for side, sign in (("left", -1), ("right", 1)):  # rows of parked cars along the kerb
        if rng.random() < 0.4:
            x = lay[side]["edge"] - sign * 1.1
            z = _log_uniform(rng, z_min + 1.0, 30.0)
            for _ in range(int(rng.integers(1, 5))):
                add_car(x, z)
                z += rng.uniform(5.3, 7.5)

    for side, sign in (("left", -1), ("right", 1)):
        s = lay[side]
        kerb_x = s["edge"] + sign * 0.5
        if rng.random() < 0.75:  # street lamps at regular spacing
            spacing, z = rng.uniform(14.0, 30.0), rng.uniform(z_min, 20.0)
            while z < 90.0:
                items.append((z, lambda cv, r, x=kerb_x, z=z, d=-sign: _draw_pole(cv, r, x, z, d)))
                z += spacing
        for _ in range(int(rng.integers(0, 3)) if side == "left" else int(rng.integers(1, 3))):
            z = _log_uniform(rng, z_min + 1.0, 30.0)
            x = kerb_x + sign * rng.uniform(0.0, 0.5)
            items.append((z, lambda cv, r, x=x, z=z: _draw_sign(cv, r, x, z)))
        if s["open"] or rng.random() < 0.35:  # trees: a row along the pavement or in the verge
            spacing, z = rng.uniform(6.0, 14.0), rng.uniform(z_min, 12.0)
            while z < 80.0:
                if s["open"]:
                    x = s["pave_edge"] + sign * rng.uniform(1.5, abs(s["x"] - s["pave_edge"]))
                else:
                    x = s["pave_edge"] - sign * rng.uniform(0.8, 1.5)
                behind = 1e3 if s["open"] else 0.0  # verge trees stand behind any pavement fence
                items.append((z + behind, lambda cv, r, x=x, z=z: _draw_tree(cv, r, x, z)))
                z += spacing * rng.uniform(0.7, 1.3)
        if rng.random() < (0.6 if s["open"] else 0.3):
            z0 = rng.uniform(z_min, 20.0)
            z1 = z0 + rng.uniform(6.0, 40.0)
            # Along the back of the pavement, drawn before the objects that stand in front of it.
            x = s["pave_edge"]
            items.append((1e3, lambda cv, r, x=x, z0=z0, z1=z1: _draw_fence(cv, r, x, z0, z1)))

    for _ in range(int(rng.integers(2, 8))):
        side, sign = (("left", -1), ("right", 1))[rng.integers(2)]
        s = lay[side]
        if rng.random() < 0.2:  # crossing the road
            x = rng.uniform(lay["road_l"], lay["road_r"])
        else:
            x = s["edge"] + sign * rng.uniform(0.6, abs(s["pave_edge"] - s["edge"]) - 0.2)
        z = _log_uniform(rng, z_min + 0.5, 30.0)
        items.append((z, lambda cv, r, x=x, z=z: _draw_person(cv, r, *cam.project([(x, 0, z)])[0], cam.scale(z))))
    for _ in range(int(rng.choice([0, 1, 1, 2, 2]))):
        sign = 1 if rng.random() < 0.5 else -1
        x = (lay["road_r"] if sign > 0 else lay["road_l"]) - sign * rng.uniform(0.8, 1.6)
        z = _log_uniform(rng, z_min + 1.0, 22.0)
        items.append((z, lambda cv, r, x=x, z=z: _draw_cyclist(cv, r, *cam.project([(x, 0, z)])[0], cam.scale(z))))
    items.sort(key=lambda item: -item[0])  # painter's order: far to near
    return items


# ------------------------------------------------------------------ public API
def render_scene(rng: np.random.Generator, size=(360, 480)):
    """Render one street scene: (RGB uint8 image (H, W, 3), uint8 label (H, W) with values 0..10).

    Deterministic given the generator's state. ``size`` is (H, W), each at least 32.
    """
    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise LightsegError(f"synthetic scene size {tuple(size)} is too small: use at least 32x32, e.g. (360, 480)")
    lay = _make_layout(rng, (h, w))
    image_f, label = _render_background(rng, lay, (h, w))
    image = np.clip(image_f, 0, 255).astype(np.uint8)
    cv = _Canvas(image, label, lay["cam"])
    # Shadow of one row of buildings across part of the road (the sun is low on that side).
    if rng.random() < 0.5:
        side, sign = (("left", -1), ("right", 1))[rng.integers(2)]
        s = lay[side]
        reach = rng.uniform(2.0, 9.0)
        for row in s["rows"]:
            if row["kind"] == "building" and row["start"] < 150:
                cv.shadow([(s["x"], 0, row["start"]), (s["x"] - sign * reach, 0, row["start"] + 2),
                           (s["x"] - sign * reach, 0, row["end"] + 2), (s["x"], 0, row["end"])], rng.uniform(0.5, 0.75))
    for _, draw in _place_objects(rng, lay):
        draw(cv, rng)
    # Global light: brightness, colour cast, uneven illumination, sensor noise, slight blur.
    img = cv.image.astype(np.float32)
    gain = (rng.uniform(0.6, 1.25) * np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15)).astype(np.float32)
    light = 1 + 0.12 * _smooth_field(rng, (h, w), (2, 3))
    img *= light[..., None]
    img *= gain
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 6.0))
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


def scene_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of scene ``index`` of ``split``: train and val streams never overlap."""
    return np.random.SeedSequence([int(seed), _STREAM_CODES[split], int(index)])


def _encode_png(array, path):
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, lambda f: f.write(buf.tobytes()))


def generate_synthetic(out_dir, n_train=300, n_val=60, size=(360, 480), seed=0, overwrite=False, verbose=False) -> Path:
    """Write a synthetic street-scene dataset in CamVid's SegNet layout and return its root.

    Same arguments -> byte-identical files. When ``out_dir`` already holds the complete set made
    with the same arguments (its marker file says so), nothing is written; ``overwrite=True``
    renders everything again.
    """
    out = Path(out_dir)
    h, w = (int(v) for v in size)
    if n_train < 1 or n_val < 1:
        raise LightsegError(f"generate_synthetic: n_train={n_train}, n_val={n_val}: both must be at least 1")
    if out.exists() and not out.is_dir():
        raise DataError(f"synthetic data directory {str(out)!r} is a file; pass a directory path")
    params = {"version": GENERATOR_VERSION, "n_train": int(n_train), "n_val": int(n_val), "size": [h, w], "seed": int(seed)}
    marker = out / MARKER_NAME
    if marker.is_file() and not overwrite:
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            old = None
        if old == params and all((out / f"{s}.txt").is_file() for s in _SPLIT_CODES):
            return out
        raise DataError(f"{out} holds synthetic data made with {old}, not {params}; "
                        "pass overwrite=True (--overwrite) or choose another directory")
    if not overwrite and not marker.is_file() and any((out / f"{s}.txt").is_file() for s in _SPLIT_CODES):
        raise DataError(f"{out} already holds a dataset that lightseg did not generate (a list file without {MARKER_NAME}); "
                        "choose another directory, or pass overwrite=True to replace its synthetic files")
    if marker.is_file():
        marker.unlink()  # an interrupted regeneration must not look complete
    start = time.perf_counter()
    for split, count in (("train", n_train), ("val", n_val)):
        for sub in (split, split + "annot"):
            d = out / sub
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob(f"{split}_*.png"):  # files of a larger earlier set
                if int(old.stem.split("_")[-1]) >= count:
                    old.unlink()
        lines = []
        for i in range(count):
            image, label = render_scene(np.random.default_rng(scene_seed(seed, split, i)), (h, w))
            name = f"{split}_{i:05d}.png"
            _encode_png(image, out / split / name)
            _encode_png(label, out / (split + "annot") / name)
            lines.append(f"{split}/{name} {split}annot/{name}\n")
        atomic_write_bytes(out / f"{split}.txt", lambda f: f.write("".join(lines).encode()))
    atomic_write_bytes(marker, lambda f: f.write(json.dumps(params, indent=1).encode()))
    if verbose:
        print(f"wrote {n_train} + {n_val} synthetic scenes of {h}x{w} to {out} in {time.perf_counter() - start:.1f} s")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightseg.data.synthetic",
                                description="Write synthetic street scenes in CamVid's SegNet layout.")
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-val", type=int, default=60)
    p.add_argument("--size", nargs=2, type=int, default=(360, 480), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        generate_synthetic(args.out_dir, args.n_train, args.n_val, tuple(args.size), args.seed, args.overwrite, verbose=True)
    except LightsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
