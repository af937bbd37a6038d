"""The faster per-image code gives the same numbers as the plain expressions it replaced."""

import cv2
import numpy as np
import pytest
from rsna import rsna_image

from edgeba.segment import _stretch, largest_component, percentiles


def _images():
    rng = np.random.default_rng(3)
    yield rng.random((1000, 760), dtype=np.float32)
    yield (rng.integers(0, 256, (333, 517)) / 255).astype(np.float32)  # many ties, like an 8-bit file
    yield np.full((64, 64), 0.25, np.float32)
    yield np.array([[0.7]], np.float32)
    yield rsna_image("1378")
    yield (rng.exponential(size=(300, 211)) ** 3).astype(np.float32)  # a long tail: its bound is guessed from a sample
    yield np.concatenate([np.zeros(90_000, np.float32), rng.random(10_000, dtype=np.float32)])  # ties across the tail


@pytest.mark.parametrize("k", range(7))
def test_percentiles_and_stretch_equal_numpy(k):
    x = list(_images())[k]
    for q in ((0.5, 99.5), (1.0, 99.0), (0.0, 100.0), (50.0,)):
        assert percentiles(x, q) == [float(v) for v in np.percentile(x, q)]
    lo, hi = np.percentile(x, (0.5, 99.5))
    plain = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    assert _stretch(x).dtype == np.float32 and np.array_equal(_stretch(x), plain)  # bit for bit
    assert _stretch(x, np.float64).dtype == np.float64 and np.array_equal(_stretch(x, np.float64), plain.astype(np.float64))


def test_largest_component_equals_the_statistics_version():
    rng = np.random.default_rng(4)
    for trial in range(30):
        m = (cv2.GaussianBlur(rng.random((120, 90), dtype=np.float32), (0, 0), 3) > 0.5 + 0.01 * (trial % 5)).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        want = np.zeros_like(m) if n <= 1 else (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        assert np.array_equal(largest_component(m), want)
    assert not largest_component(np.zeros((5, 5), np.uint8)).any()


def test_an_8bit_image_takes_the_lookup_table_path():
    from edgeba.segment import _levels

    from edgeba.io import UNIT_8BIT

    x = rsna_image("1378")  # a JPEG: 256 levels
    assert _levels(x) is not None and np.array_equal(UNIT_8BIT[_levels(x)], x)
    for off_grid in (np.random.default_rng(0).random((50, 50), dtype=np.float32), x.astype(np.float64), -x, x + 1e-4):
        assert _levels(off_grid) is None


def test_ellipse_dilation_by_rectangles_is_cv2_dilate():
    # polarity.hand_contrast (a distance map) and reframe (a mask) dilate by an ellipse as the maximum
    # over its rectangles.
    from edgeba.segment import dilate_ellipse

    rng = np.random.default_rng(5)
    hand = (rsna_image("1378") > 0.3).astype(np.uint8)[::3, ::3]
    maps = [cv2.distanceTransform(np.ascontiguousarray(hand), cv2.DIST_L2, 5), rng.random((61, 47), dtype=np.float32),
            np.where(rng.random((80, 120)) > 0.7, rng.random((80, 120)), 0).astype(np.float32), np.zeros((9, 9), np.float32), hand, rng.normal(size=(50, 70)).astype(np.float32)]
    for k in (1, 2, 3, 7, 19, 20, 24, 51):
        ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        for d in maps:
            assert np.array_equal(dilate_ellipse(d, k), cv2.dilate(d, ellipse))  # bit for bit


def test_the_band_around_a_hand_is_dilated_near_it_only():
    # reframe._surround_level dilates only the mask's box plus the band width: the same median as
    # dilating the whole image, for a hand-sized mask and for a small one in the middle of a plate.
    from edgeba.reframe import _surround_level

    img = rsna_image("1378")
    whole = (img > 0.4).astype(np.uint8)
    small = np.zeros_like(whole)
    small[300:500, 200:400] = whole[300:500, 200:400]
    for mask in (whole, small, np.pad(np.ones((40, 30), np.uint8), ((0, img.shape[0] - 40), (img.shape[1] - 30, 0)))):
        ys, xs = np.nonzero(mask)
        k = max(3, round(0.05 * max(ys.max() - ys.min(), xs.max() - xs.min())))
        band = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))) > mask
        assert _surround_level(img, mask, cv2.boundingRect(mask)) == float(np.median(img[band]))


def _reframe_by_every_pixel(pixels, mask):
    """reframe's geometry as first written: the centre and the turned box from every mask pixel."""
    from edgeba import reframe as rf
    from edgeba.crop import upright_angle

    ys, xs = np.nonzero(mask)
    tilt = upright_angle(mask)
    tilted = abs(tilt) > rf.MAX_TILT
    rot = cv2.getRotationMatrix2D((float(xs.mean()), float(ys.mean())), tilt if tilted else 0.0, 1.0)
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64) @ rot.T
    return rot, pts.min(axis=0), pts.max(axis=0) + 1


@pytest.mark.parametrize("angle", [0, 33, -40, 50])
def test_reframe_turns_only_the_hull_and_frames_exactly_as_every_pixel_would(angle):
    # The turned box's extremes lie on the mask's convex hull; the centre from moments is the pixels' mean.
    from edgeba import reframe as rf

    img = rsna_image("1378")
    h, w = img.shape
    hand = (cv2.GaussianBlur(img, (0, 0), 3) > 0.35).astype(np.uint8)
    small = np.zeros_like(hand)
    small[h // 4 :, w // 4 :] = cv2.resize(hand, (w - w // 4, h - h // 4), interpolation=cv2.INTER_NEAREST)[: h - h // 4]
    m = cv2.warpAffine(small, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h), flags=cv2.INTER_NEAREST)
    rot, lo, hi = _reframe_by_every_pixel(img, m)
    mo = cv2.moments(m, binaryImage=True)
    ys, xs = np.nonzero(m)
    assert (mo["m10"] / mo["m00"], mo["m01"] / mo["m00"]) == (float(xs.mean()), float(ys.mean()))
    hull = cv2.convexHull(cv2.findNonZero(m)).reshape(-1, 2).astype(np.int64)
    pts = np.stack([hull[:, 0], hull[:, 1], np.ones(len(hull), np.int64)], axis=1).astype(np.float64) @ rot.T
    np.testing.assert_array_equal(pts.min(axis=0), lo)
    np.testing.assert_array_equal(pts.max(axis=0) + 1, hi)
    r = rf.reframe(img, m)
    if r is not None:  # the frame's size follows from that box: the hull version's frame, recomputed
        frame_h = (hi[1] - lo[1]) / rf.TYPICAL_HEIGHT
        assert r.pixels.shape == (max(1, round(frame_h)), max(1, round(frame_h / rf.TYPICAL_ASPECT)))


def test_ellipse_opening_by_rectangles_is_cv2_morphology_ex():
    # segment.mask_from_prob opens the thresholded U-Net map (outside the image = background) this way.
    from edgeba.segment import open_ellipse

    rng = np.random.default_rng(6)
    hand = (rsna_image("1378") > 0.3).astype(np.uint8)[::2, ::2]
    masks = [np.ascontiguousarray(hand), (rng.random((90, 70)) > 0.4).astype(np.uint8), np.ones((40, 60), np.uint8),
             (cv2.GaussianBlur(rng.random((128, 96), dtype=np.float32), (0, 0), 2) > 0.5).astype(np.uint8), np.zeros((9, 9), np.uint8)]
    for k in (1, 2, 3, 6, 9, 12):
        ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        for m in masks:
            want = cv2.morphologyEx(m, cv2.MORPH_OPEN, ellipse, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            assert np.array_equal(open_ellipse(m, k), want), (k, m.shape)


def _masks_for_boxes():
    rng = np.random.default_rng(7)
    hand = (rsna_image("1378") > 0.35).astype(np.uint8)[::2, ::2]
    twins = np.zeros((101, 87), np.uint8)  # two components of equal area: largest_component's tie
    twins[13:24, 31:40] = 1
    twins[61:72, 5:14] = 1
    corner = np.zeros((60, 50), np.uint8)
    corner[40:, 35:] = 1  # touches two image borders
    yield np.ascontiguousarray(hand)
    yield twins
    yield corner
    yield np.zeros((30, 40), np.uint8)
    yield np.ones((25, 35), np.uint8)
    for trial in range(8):
        blob = cv2.GaussianBlur(rng.random((140, 110), dtype=np.float32), (0, 0), 3) > 0.52 + 0.01 * trial
        sub = np.zeros_like(blob, np.uint8)
        sub[17 + trial :, 9 + 2 * trial : 100] = blob[17 + trial :, 9 + 2 * trial : 100]  # off the image's edges
        yield sub


def test_work_near_the_mask_only_is_the_whole_image_computation():
    # segment.mask_from_prob cleans its masks inside their bounding boxes (segment.in_box).
    from edgeba.segment import dilate_ellipse, fill_holes, in_box, open_ellipse

    for r in (1, 3, 6):
        def clean(m, r=r):
            return fill_holes(largest_component(dilate_ellipse(largest_component(open_ellipse(m, r)), r) & m))

        for m in _masks_for_boxes():
            assert np.array_equal(in_box(clean, m), clean(m)), (r, m.shape)
            assert np.array_equal(in_box(lambda x: fill_holes(largest_component(x)), m), fill_holes(largest_component(m)))


def _hand_contrast_on_the_whole_image(pixels, mask):
    """polarity.hand_contrast as first written: stretch, distances and local thickness over the whole image."""
    from edgeba import polarity as pol
    from edgeba.segment import dilate_ellipse

    h, w = pixels.shape
    s = min(1.0, pol.WORK_SIDE / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = cv2.resize(pixels.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(small, (1, 99))
    img = np.clip((small - lo) / max(hi - lo, 1e-6), 0, 1)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    d = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    local = dilate_ellipse(d, max(2, round(pol.WINDOW * max(size))))
    r = np.where(local >= 2.0, d / np.maximum(local, 1e-6), 0.0)
    centre, flank = r >= pol.CENTRE, (r > pol.FLANK[0]) & (r <= pol.FLANK[1])
    if centre.sum() < 20 or flank.sum() < 20:
        return float("nan")
    return float(np.median(img[centre]) - np.median(img[flank]))


def test_hand_contrast_measured_in_the_masks_box_is_the_whole_image_measure():
    from edgeba.polarity import hand_contrast

    img = rsna_image("1378")
    h, w = img.shape
    hand = (cv2.GaussianBlur(img, (0, 0), 4) > 0.3).astype(np.uint8)
    small = np.zeros_like(hand)
    small[h // 3 :, w // 5 : w // 5 + w // 2] = hand[h // 3 :, w // 5 : w // 5 + w // 2]
    for pixels in (img, 1.0 - img, np.ascontiguousarray(img[::-1, :])):
        for mask in (hand, small, np.ones_like(hand), np.zeros_like(hand), (pixels > 0.5).astype(np.uint8)):
            want, got = _hand_contrast_on_the_whole_image(pixels, mask), hand_contrast(pixels, mask)
            assert got == want or (np.isnan(got) and np.isnan(want))  # bit for bit


def test_a_quarter_turn_is_letterboxed_from_the_stored_content():
    # orient.py segments the stored image turned: the Predictor keeps each image's resampled content (unet_input's
    # `seen`) and turns it instead of resampling the turned copy again.
    from edgeba.segment import unet_input

    img = np.ascontiguousarray(rsna_image("1378")[:, :-3])  # an odd width: the letterbox pads unevenly
    seen: list = []
    unet_input(img, 128, seen)
    assert len(seen) == 1
    for k in (1, 2, 3):
        turned = np.ascontiguousarray(np.rot90(img, k))
        x, box = unet_input(turned, 128, seen)
        fresh, fresh_box = unet_input(turned, 128)
        assert box == fresh_box and len(seen) == 1
        np.testing.assert_array_max_ulp(x, fresh, maxulp=1)  # the same picture, but for float32 rounding
    painted = img.copy()
    painted[:40] = 0.0  # the same shape, not a turn: resampled on its own
    x, _ = unet_input(np.ascontiguousarray(np.rot90(painted, 2)), 128, seen)
    assert len(seen) == 2 and np.array_equal(x, unet_input(np.ascontiguousarray(np.rot90(painted, 2)), 128)[0])


def _texture_by_partition(pixels, mask):
    """hand.texture as first written: two medians of the hand's pixels by partition."""
    v = pixels[mask > 0]
    if not v.size:
        return 0.0
    return float(np.median(np.abs(v - np.median(v))))


def _noise_by_partition(pixels):
    """conditions.noise_level as first written: the residuals' medians by partition."""
    from edgeba.conditions import NOISE_BAND, NOISE_STRIDE

    h = pixels.shape[0]
    parts = []
    for y in range(0, max(1, h - NOISE_BAND) + 1, NOISE_STRIDE):
        rows = slice(y, min(h, y + NOISE_BAND))
        u8 = np.clip(pixels[rows] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        parts.append((pixels[rows].astype(np.float32) - cv2.medianBlur(u8, 3).astype(np.float32) / 255.0)[1:-1].ravel())
    d = np.concatenate(parts)
    return 1.4826 * float(np.median(np.abs(d - np.median(d)))) if d.size else 0.0


def test_medians_from_8bit_counts_are_the_partition_medians():
    # hand.texture and conditions.noise_level count an 8-bit file's levels instead of partitioning its pixels.
    from edgeba.conditions import noise_level
    from edgeba.hand import texture
    from edgeba.io import UNIT_8BIT
    from edgeba.segment import _levels, median_of_levels

    rng = np.random.default_rng(8)
    for n in (1, 2, 3, 10, 11, 1000, 1001):  # odd and even counts: np.median's float32 mean of the middle two
        for spread in (1, 3, 256):
            v = UNIT_8BIT[rng.integers(100, 100 + spread, n) % 256]
            assert median_of_levels(np.bincount(np.round(v * 255).astype(int), minlength=256), UNIT_8BIT) == np.median(v)
    img = rsna_image("1378")  # a JPEG: 256 levels, so the counting path
    noisy = UNIT_8BIT[np.round(np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1) * 255).astype(np.uint8)]
    hand = (cv2.GaussianBlur(img, (0, 0), 4) > 0.3).astype(np.uint8)
    assert _levels(img) is not None and _levels(noisy) is not None and _levels(1.0 - img) is None  # both paths run
    for pixels in (img, noisy, 1.0 - img, img.astype(np.float64).astype(np.float32) + np.float32(1e-4), img[:2], img[:40, :1]):
        for mask in (hand[: pixels.shape[0], : pixels.shape[1]], np.ones(pixels.shape, np.uint8), np.zeros(pixels.shape, np.uint8)):
            assert texture(pixels, mask) == _texture_by_partition(pixels, mask)  # bit for bit
        assert noise_level(pixels) == _noise_by_partition(pixels)


def test_the_inverse_of_an_8bit_file_is_stretched_through_its_own_lookup_table():
    # hand.find_hand segments 1.0 - pixels when the polarity is unclear: 256 values too, in the opposite order.
    from edgeba.io import UNIT_8BIT
    from edgeba.segment import _levels

    img = rsna_image("1378")
    rng = np.random.default_rng(9)
    for x in (1.0 - img, 1.0 - UNIT_8BIT[rng.integers(0, 256, (333, 517))], 1.0 - UNIT_8BIT[rng.integers(120, 124, (64, 80))],
              np.float32(1.0) - img[:1, :1]):
        assert _levels(x) is None and _levels(x, inverse=True) is not None  # the new path runs
        lo, hi = np.percentile(x, (0.5, 99.5))
        plain = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
        assert np.array_equal(_stretch(x), plain) and np.array_equal(_stretch(x, np.float64), plain.astype(np.float64))
    for off_grid in (img, 1.0 - img + np.float32(1e-4), (1.0 - img).astype(np.float64)):
        assert _levels(off_grid, inverse=True) is None
