"""`text`: PP-OCRv4 text detector (a DB probability map), turned into a 0..1 score by
`text_line_score`, a heuristic line-shape filter (`FrameEvidence.text`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from streams.stages.models.base import FloatArray, Frame, OnnxModel, Session, resize_rgb

# Burned-in text (camera names, timestamps) is static, so the text detector, a quarter of a
# clip's inference cost, looks at a few frames spread over the clip instead of all of them.
TEXT_FRAMES = 4

# DB post-processing constants as PaddleOCR ships them (det_db_thresh, det_db_box_thresh).
TEXT_PIXEL_THRESHOLD = 0.3
TEXT_BOX_THRESHOLD = 0.6
# Heuristic line-shape limits, in pixels of the map (= of the frame at analysis height 320).
# A 10 px timestamp font gives regions 6 px high and 28-38 px wide (date and time apart);
# what else scored 0.8-0.96: window panes in vtest.avi (4x12), a shirt print (14x22), eyes
# in Megamind.avi (6x16, 8x24, 8x26). Width >= 28 px asks for about four characters.
TEXT_MIN_HEIGHT = 5
TEXT_MIN_WIDTH = 28
TEXT_MIN_ASPECT = 2.5


def text_frames(count: int, most: int = TEXT_FRAMES) -> list[int]:
    """Indices of at most `most` frames spread evenly over `count` (first and last included)."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def text_input_size(height: int, width: int) -> tuple[int, int]:
    """The nearest sides that are multiples of 32 (the DB net downsamples by 32)."""
    return max(32, round(height / 32) * 32), max(32, round(width / 32) * 32)


def preprocess_text(frames: Sequence[Frame]) -> FloatArray:
    """RGB uint8 frames -> BGR float32 NCHW in -1..1, sides multiples of 32."""
    height, width = text_input_size(*frames[0].shape[:2])
    stacked = np.stack([resize_rgb(f, width, height) for f in frames])
    bgr = stacked[..., ::-1].astype(np.float32)
    normalized = (bgr / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))


def text_line_score(prob_map: FloatArray) -> float:
    """Heuristic: how sure we are that the frame shows a line of text, 0..1.

    The DB map also lights up on foliage, fences, window panes and textured walls. Printed
    text (an on-screen timestamp, a sign, a number plate) forms compact, horizontal,
    well-filled regions, so only regions with that shape count: at least TEXT_MIN_HEIGHT px
    high and at most a quarter of the frame, at least TEXT_MIN_WIDTH px (about four
    characters) and TEXT_MIN_ASPECT times their height wide, filling at least half of their bounding box, with
    a mean probability of at least TEXT_BOX_THRESHOLD. The score is the best such region's
    mean probability; 0 when none passes.
    """
    binary = prob_map > TEXT_PIXEL_THRESHOLD
    labelled, count = ndimage.label(binary)
    if count == 0:
        return 0.0
    frame_height = prob_map.shape[0]
    best = 0.0
    for index, region in enumerate(ndimage.find_objects(labelled), start=1):
        if region is None:
            continue
        height = region[0].stop - region[0].start
        width = region[1].stop - region[1].start
        mask = labelled[region] == index
        fill = float(mask.mean())
        if not (
            TEXT_MIN_HEIGHT <= height <= frame_height / 4
            and width >= max(TEXT_MIN_WIDTH, TEXT_MIN_ASPECT * height)
            and fill >= 0.5
        ):
            continue
        mean_prob = float(prob_map[region][mask].mean())
        if mean_prob >= TEXT_BOX_THRESHOLD:
            best = max(best, mean_prob)
    return best


class TextDetector(OnnxModel):
    role = "text"
    feeds = ("float32",)
    reads = ("prob_map",)

    def score(self, session: Session, frames: Sequence[Frame]) -> list[float]:
        """`text_line_score` of each frame of one batch of frames of one shape."""
        (prob_maps,) = self.run(session, preprocess_text(frames))
        return [text_line_score(prob_maps[i, 0]) for i in range(len(frames))]
