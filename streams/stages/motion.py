"""HEURISTIC motion and appearance statistics across a clip's sampled frames (pure numpy).

No model stands behind anything here: no registry package ships a rain, wind, flag or plant
model. These are measurements of how the picture changes, and `heuristic_scores` turns them
into 0..1 scores for `plant`, `flag`, `rain`, `wind` and the motion part of `other` and
`NOTHING` by fixed, documented ramps (docs/classify.md, "Heuristic labels"). A heuristic
score says how strongly the clip shows the pattern the label is named after; it is not a
probability and was not fitted to data.

What is measured, on grey frames shrunk to ANALYSIS_HEIGHT rows (averaging blocks of pixels
both removes sensor noise and makes the work cheap):
- global motion: the shift between consecutive frames by phase correlation (camera pan, PTZ,
  shake); frames are re-aligned to the first before anything else is measured, so a panning
  camera does not look like a moving scene;
- change: a pixel changed between two consecutive aligned frames when its grey level left the
  range of its old 3x3 neighbourhood by more than CHANGE_LEVEL (so what alignment leaves of a
  zoom or a sub-pixel pan on a textured surface does not count);
- spread: the share of grid cells where something changed, averaged over frame pairs (a
  walker touches a few cells, foliage or rain many);
- persistence: of the cells that ever changed, the share of frame pairs in which they
  changed (the same places keep moving: foliage, flags, rain; a walker passes through);
- green share: the share of changed pixels that are green (foliage);
- saturation of the changed pixels (flags are vivid);
- streak verticality and thinness of the change (falling rain draws thin near-vertical
  streaks);
- shake: how often the global shift reverses direction (wind shaking the camera).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ANALYSIS_HEIGHT = 80
CHANGE_LEVEL = 12.0  # grey levels out of 255, after block averaging
MOVING_CHANGE_LEVEL = 24.0  # the same, when the camera moved (texture residue of alignment)
GRID = (6, 8)  # rows, columns of the spread/persistence grid
CELL_ACTIVE = 0.02  # a cell "changed" when at least this share of its pixels changed
MIN_CAMERA_SHIFT = 0.07  # pixels at ANALYSIS_HEIGHT between consecutive frames
SHAKE_MIN_SHIFT = 0.5  # pixels at ANALYSIS_HEIGHT; smaller shifts are noise of the estimate


@dataclass(frozen=True)
class MotionStats:
    """Measurements, each documented in the module docstring; all 0 for a single frame."""

    pairs: int  # consecutive frame pairs measured
    changed: float  # mean share of pixels changed between consecutive aligned frames
    spread: float  # mean share of grid cells with change
    persistence: float  # share of pairs in which an ever-changing cell changes
    green_share: float  # share of changed pixels that are green
    saturation: float  # mean HSV saturation (0..1) of changed pixels
    verticality: float  # 0.5 = no preferred direction, 1 = all change in vertical streaks
    thinness: float  # 0 = blobs, 1 = one-pixel-wide lines
    global_shift: float  # median shift between consecutive frames, pixels at ANALYSIS_HEIGHT
    shake: float  # share of consecutive shifts that reverse direction
    brightness_change: float  # largest change of mean grey level between two frames, 0..1


STILL = MotionStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0)


def ramp(value: float, low: float, high: float) -> float:
    """0 below `low`, 1 above `high`, linear between: the one shape every heuristic uses."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def motion_stats(frames: Sequence[np.ndarray]) -> MotionStats:
    """HEURISTIC statistics of RGB uint8 frames (H x W x 3) sampled from one clip."""
    if len(frames) < 2:
        return STILL
    rgb = np.stack([_shrink(frame) for frame in frames])  # T, h, w, 3 float32
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    shifts = [_phase_shift(grey[i], grey[i + 1]) for i in range(len(grey) - 1)]
    magnitudes = [float(np.hypot(*s)) for s in shifts]
    # A fixed camera's shifts are the estimate's own noise (measured: median <= 0.05 px); a
    # panning or zooming one moves steadily.
    camera_moved = float(np.median(magnitudes)) > MIN_CAMERA_SHIFT or max(magnitudes) > 1.0
    if camera_moved:
        offsets = np.cumsum([(0.0, 0.0), *shifts], axis=0)
        aligned, crop = _align(grey, offsets)
        # What alignment leaves of a zoom or a sub-pixel pan is forgiven; on a fixed camera
        # plain differences keep small real motion (leaves).
        diff = _tolerant_diff(aligned) * (CHANGE_LEVEL / MOVING_CHANGE_LEVEL)
    else:
        aligned, crop = grey, (slice(None), slice(None), slice(None))
        diff = np.abs(np.diff(aligned, axis=0))
    rgb_aligned = rgb[crop]
    change = diff > CHANGE_LEVEL
    pairs = change.shape[0]
    cells = _cell_activity(change)  # pairs, rows, cols
    ever = cells.any(axis=0)
    changed_rgb = rgb_aligned[1:][change]  # N, 3 of changed pixels (in the later frame)

    reversals = [
        float(np.dot(a, b)) < 0
        for a, b in itertools.pairwise(shifts)
        if np.hypot(*a) > SHAKE_MIN_SHIFT and np.hypot(*b) > SHAKE_MIN_SHIFT
    ]
    means = aligned.reshape(aligned.shape[0], -1).mean(axis=1)
    verticality, thinness = _streaks(diff * change)
    return MotionStats(
        pairs=pairs,
        changed=float(change.mean()),
        spread=float(cells.mean()),
        persistence=float(cells[:, ever].mean()) if ever.any() else 0.0,
        green_share=_green_share(changed_rgb),
        saturation=_saturation(changed_rgb),
        verticality=verticality,
        thinness=thinness,
        global_shift=float(np.median(magnitudes)),
        shake=float(np.mean(reversals)) if len(reversals) >= 2 else 0.0,
        brightness_change=float(np.abs(np.diff(means)).max() / 255.0),
    )


@dataclass(frozen=True)
class HeuristicScores:
    """0..1 HEURISTIC scores; `activity` is "meaningful motion", the input of other/NOTHING."""

    activity: float
    plant: float
    flag: float
    rain: float
    wind: float


def heuristic_scores(stats: MotionStats) -> HeuristicScores:
    """Fixed ramps over the statistics (docs/classify.md gives the same formulas)."""
    # Sensor noise and compression flicker change well under 0.3% of the pixels of a still
    # scene (measured on the empty crops of vtest.avi); a walker or swaying foliage, several %.
    activity = ramp(stats.changed, 0.003, 0.02)
    in_place = ramp(stats.persistence, 0.3, 0.5)
    widespread = ramp(stats.spread, 0.15, 0.4)
    # Foliage: the changed pixels are mostly green (people crossing a lawn: ~30%, the tree
    # of tree.avi: 60-80%) and the same places keep changing.
    plant = activity * in_place * ramp(stats.green_share, 0.35, 0.6)
    # A flag: a compact area that keeps moving, vivid and not foliage-green.
    flag = (
        activity
        * in_place
        * (1.0 - widespread)
        * ramp(stats.saturation, 0.35, 0.6)
        * (1.0 - ramp(stats.green_share, 0.35, 0.6))
    )
    rain = (
        activity * widespread * ramp(stats.verticality, 0.65, 0.8) * ramp(stats.thinness, 0.4, 0.7)
    )
    # Wind is seen through what it moves: vegetation or a flag in motion, or a camera shaking
    # back and forth.
    wind = max(plant, flag, ramp(stats.shake, 0.3, 0.7))
    return HeuristicScores(activity=activity, plant=plant, flag=flag, rain=rain, wind=wind)


def _shrink(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    factor = max(1, -(-height // ANALYSIS_HEIGHT))
    h, w = height // factor, width // factor
    blocks = frame[: h * factor, : w * factor, :3].astype(np.float32)
    out: np.ndarray = blocks.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    return out


def _phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dy, dx) such that b(y, x) ~ a(y - dy, x - dx), sub-pixel by a parabola on the peak."""
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1])).astype(np.float32)
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-6
    corr = np.fft.ifft2(cross).real
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    shift = []
    for axis, size in enumerate(corr.shape):
        index = peak[axis]
        before = list(peak)
        after = list(peak)
        before[axis] = (index - 1) % size
        after[axis] = (index + 1) % size
        left, centre, right = corr[tuple(before)], corr[peak], corr[tuple(after)]
        denom = left - 2 * centre + right
        sub = 0.5 * (left - right) / denom if denom != 0 else 0.0
        value = index + float(np.clip(sub, -0.5, 0.5))
        shift.append(value - size if value > size / 2 else value)
    return shift[0], shift[1]


def _align(grey: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Shift every frame back onto the first (Fourier shift); crop what wrapped around."""
    t, h, w = grey.shape
    everything = (slice(None), slice(None), slice(None))
    if (offsets == 0).all():
        return grey, everything
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    out = np.empty_like(grey)
    for i in range(t):
        dy, dx = offsets[i]
        phase = np.exp(2j * np.pi * (fy * dy + fx * dx))
        out[i] = np.fft.ifft2(np.fft.fft2(grey[i]) * phase).real
    # Past the largest offset the shifted picture is wrapped-around content, and the shift
    # rings for a few pixels more.
    margin_y = int(np.ceil(np.abs(offsets[:, 0]).max())) + 3
    margin_x = int(np.ceil(np.abs(offsets[:, 1]).max())) + 3
    if 2 * margin_y >= h - 8 or 2 * margin_x >= w - 8:
        # The camera moved by most of the picture: nothing left in common to compare.
        return out, everything
    crop = (slice(None), slice(margin_y, h - margin_y), slice(margin_x, w - margin_x))
    return out[crop], crop


def _tolerant_diff(frames: np.ndarray) -> np.ndarray:
    """|change| between consecutive frames that a one-pixel misalignment cannot explain.

    A pixel's new value only counts by how far it falls outside the range of its old 3x3
    neighbourhood (and the other way round): what is left of a zoom, sub-pixel pan or shake
    after alignment stays inside that range on textured surfaces (brick, grass), while a
    moving object leaves it.
    """
    low, high = _range3x3(frames)
    after_vs_before = np.maximum(frames[1:] - high[:-1], low[:-1] - frames[1:])
    before_vs_after = np.maximum(frames[:-1] - high[1:], low[1:] - frames[:-1])
    out: np.ndarray = np.maximum(np.maximum(after_vs_before, before_vs_after), 0.0)
    return out


def _range3x3(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = frames.shape[1:]
    views = [padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    return np.minimum.reduce(views), np.maximum.reduce(views)


def _cell_activity(change: np.ndarray) -> np.ndarray:
    pairs, h, w = change.shape
    rows, cols = GRID
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    out = np.zeros((pairs, rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            cell = change[:, ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
            out[:, r, c] = cell.reshape(pairs, -1).mean(axis=1) >= CELL_ACTIVE
    return out


def _green_share(pixels: np.ndarray) -> float:
    if len(pixels) == 0:
        return 0.0
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    return float(((g > r + 4) & (g > b + 4)).mean())


def _saturation(pixels: np.ndarray) -> float:
    if len(pixels) == 0:
        return 0.0
    high = pixels.max(axis=1)
    low = pixels.min(axis=1)
    return float(np.mean((high - low) / np.maximum(high, 1.0)))


def _streaks(energy: np.ndarray) -> tuple[float, float]:
    """Verticality and thinness of the change pattern (thin vertical streaks: rain)."""
    total = float((energy**2).sum())
    if total == 0.0:
        return 0.5, 0.0
    gx = np.diff(energy, axis=2)
    gy = np.diff(energy, axis=1)
    ex, ey = float((gx**2).sum()), float((gy**2).sum())
    verticality = ex / (ex + ey) if ex + ey > 0 else 0.5
    # Share of the change energy that a 3-pixel horizontal blur removes: thin lines lose most.
    blurred = (energy[:, :, :-2] + energy[:, :, 1:-1] + energy[:, :, 2:]) / 3.0
    thinness = 1.0 - float((blurred**2).sum()) / float((energy[:, :, 1:-1] ** 2).sum() + 1e-9)
    return verticality, float(np.clip(thinness * 1.5, 0.0, 1.0))
