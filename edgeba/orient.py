"""Turn the radiograph fingers-up, in quarter turns, before the rest of the pipeline sees it.

The U-Net was trained on upright hands: on a landscape or upside-down scan it outlines only part of
the hand (stress suite, rot90/180/270: masks of a wrist or two fingers, estimates years off), and a
whole-image regressor never saw such a frame either. A quarter turn is exact (no resampling), so
the turned image is the radiograph itself. The common case costs one extra U-Net pass: a hand whose mask
passes QC, shows its finger gaps, points up (within 45 degrees) and is not outlined better upside
down is kept as stored (two U-Net passes). Otherwise the other quarter turns are segmented too and the
best-outlined hand wins.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeba import conditions
from edgeba.crop import upright_angle
from edgeba.hand import Hand, find_hand
from edgeba.quality import hand_present

MAX_TILT = 45.0  # degrees from fingers-up that still count as upright
# A turn also needs the turned outline to show bone at least a little brighter than soft tissue
# (polarity.hand_contrast). On a bright plate or a collimated field the U-Net outlines an upright hand
# poorly and a sideways copy could out-rank it with an outline of nothing in particular (val stress, 60
# images: 3 upright hands turned, contrast of the winner -0.02 to +0.06; one 204-month hand estimated 36).
# The largest bar that keeps the train/tune turn study (90 radiographs x 4 turns) 360 of 360 right.
MIN_TURN_CONTRAST = 0.03
# A quarter turn moves no pixel in or out of the image, so the turned copy's outline of the whole hand covers as much
# of it as the stored image's does. One that covers under MIN_TURN_AREA of the stored outline's area, when that one
# passes QC, is part of the hand (a few fingers of a hand tilted 30-45 degrees, outlined upright with more "finger
# gaps" than the whole hand: train 9617 tilted 45 degrees, 69 months, was estimated 22), and is no reason to turn. A
# stored outline that fails QC is no measure of the hand (a plate's or a leak's outline: train, small films on a
# plate turned 90-270 degrees, 3 of 180 kept sideways without this condition). Chosen on 100 train films x 10
# rotations (0.3 / 0.5: errors over 24 months 42 / 41 of 2,000, off 48) and judged on tune (train/RESULTS.md, session 14).
MIN_TURN_AREA = 0.5
# On a bright plate a hand's soft tissue is darker than the plate, and the U-Net (trained on dark films) outlines the
# silhouette better in the inverse grey scale, as find_hand already uses for the stored image. When the stored image's
# hand was not inverted, its film is bright (conditions.bright_film) and its outline does not both pass QC and point up,
# each turned copy is segmented in both grey scales and the better-ranked outline stands. (Searched for every bright
# film, an upright hand's upside-down copy out-ranked it in the inverse: tune bright plate +2.0 months; train/RESULTS.md,
# session 16.)
INVERSE_TURNS = True


def upright(hand: Hand) -> bool:
    return bool(hand.mask.any()) and abs(upright_angle(hand.mask)) <= MAX_TILT


def _rank(hand: Hand) -> tuple:
    """Which quarter turn shows the hand best: upright first (the U-Net outlines a whole hand only when it
    points up, and on a sideways copy it can still draw a QC-passing outline of part of it); then an outline
    that does not leave through the top edge (the forearm leaves a radiograph at the bottom: an upside-down
    copy's outline runs off the top); then a hand with fingers (`hand_present`), the finger gaps, and the
    larger outline (upside down, the U-Net outlines less of the hand). Mask QC as such is no evidence of
    the orientation: an upright hand whose forearm touches a side fails it. Chosen on all 935 train
    radiographs x 4 turns (train/RESULTS.md, session 12): 42 wrong of 3,740 in simulation, against 61 for the
    rank that put QC second (chosen in session 9 on 50 x 4)."""
    q = hand.quality
    m = q.metrics
    return (upright(hand), "top" not in m.get("border_sides", []), hand_present(q), min(m.get("finger_gaps", 0), 5),
            float(hand.mask.mean()))


def _settled(hand: Hand, rank: tuple, upside_down: tuple) -> bool:
    """No search needed: QC passes, the hand points up (rank[0]), its outline has at least five deep
    concavities (finger gaps, thumb web), and the image turned upside down shows it no better. The last
    check is why every image costs a second U-Net pass: on a hand turned 180 degrees the U-Net can miss
    fingers, and the fingers-up test then reads the partial outline as upright (tune, 40 radiographs x
    4 turns: 2 upside-down copies settled wrongly without it, none with it)."""
    q = hand.quality
    return q.ok and rank[0] and q.metrics.get("finger_gaps", 0) >= 5 and rank >= upside_down


def _turnable(hand: Hand, is_upright: bool, stored: Hand, inverse: bool = False) -> bool:
    """`inverse`: the outline is the inverse grey scale's (INVERSE_TURNS). Inside a silhouette on a bright plate the
    bone contrast of the stored grey scale is weak (0.013-0.027 on tune films turned back right), so there a whole
    hand's outline (QC passed, five finger gaps, as `_settled` asks) is evidence enough."""
    if stored.quality.ok and hand.mask.mean() < MIN_TURN_AREA * stored.mask.mean():
        return False
    if is_upright and inverse and hand.quality.ok and hand.quality.metrics.get("finger_gaps", 0) >= 5:
        return True
    return is_upright and hand.contrast > MIN_TURN_CONTRAST  # NaN (no bone found): never


def turn(pixels: np.ndarray, k: int) -> np.ndarray:
    """`pixels` turned k quarter turns counter-clockwise (np.rot90), contiguous; k = 0 returns them as they are."""
    if k % 4 == 0:
        return pixels
    return np.ascontiguousarray(np.rot90(pixels, k))


def find_upright_hand(pixels: np.ndarray, segment: Callable[[np.ndarray], np.ndarray],
                      polarity_known: bool = False) -> tuple[Hand, int]:
    """(hand, turns): the hand found in `pixels` turned `turns` quarter turns counter-clockwise
    (np.rot90; 0 = as stored). The returned Hand's pixels and mask are in the turned frame.

    The other turns are segmented in the grey scale the stored image's pass settled on (one U-Net
    pass each; a bright film's in both, INVERSE_TURNS); a turned winner's polarity is then decided from its own, upright
    outline (segmented once more from the stored pixels when the stored image's pass inverted them)."""
    first = find_hand(pixels, segment, polarity_known)
    hands, ranks = {0: first}, {0: _rank(first)}  # each outline judged once (upright_angle is not free)
    # ranks[0][0]: the stored outline points up.
    inverse = (INVERSE_TURNS and not polarity_known and not first.inverted and bool(first.mask.any())
               and not (first.quality.ok and ranks[0][0]) and conditions.bright_film(first.surround))
    neg = 1.0 - first.pixels if inverse else None
    from_inverse: set[int] = set()

    def turned(k: int) -> tuple[Hand, tuple]:
        """The hand of the stored image turned k quarter turns, and its rank; for a bright film the inverse's outline when
        it ranks higher. The other turns get no sub-film pass (hand.film_box): on a collimated field a copy turned upside
        down, re-segmented on the field alone, can pass QC with part of the hand and out-rank the stored image's leaky
        but hand-like outline (train stress, collimation: 3 of the first 22 upright hands were turned 180 degrees)."""
        hand = find_hand(turn(first.pixels, k), segment, True, film=False)
        rank = _rank(hand)
        if neg is not None:
            inv = find_hand(turn(neg, k), segment, True, film=False)
            outline = Hand(hand.pixels, inv.mask, inv.quality, inverted=False, zoomed=inv.zoomed)
            if (r := _rank(outline)) > rank:
                from_inverse.add(k)
                return outline, r
        return hand, rank

    hands[2], ranks[2] = turned(2)
    if _settled(first, ranks[0], ranks[2]):
        return first, 0
    turns = 0
    for k in (1, 2, 3):
        if k not in hands:
            hands[k], ranks[k] = turned(k)
        # Only to an upright outline, and only when strictly better (ties keep the image as stored): a
        # non-hand segmented four ways must not get four chances to pass as one (tests/test_hand.py).
        if _turnable(hands[k], ranks[k][0], first, k in from_inverse) and ranks[k] > ranks[turns]:
            turns = k
    if turns == 0:
        return first, 0
    if first.inverted:
        hand = find_hand(turn(pixels, turns), segment, polarity_known, film=False)
    else:  # the candidate's pixels are the stored ones turned: its pass stands, only the polarity is left
        hand = find_hand(hands[turns].pixels, segment, polarity_known, outline=hands[turns], film=False)
    if _turnable(hand, ranks[turns][0] if hand is hands[turns] else upright(hand), first, hand is hands[turns] and turns in from_inverse):
        return hand, turns
    # The polarity pass outlined something else (it segments the inverse when QC fails or the contrast is
    # unclear): the turned outline that won the search stands, in the grey scale the stored image settled on.
    # Going back to the stored image here left 28 of 3,740 train searches wrong (session 12).
    won = hands[turns]
    return Hand(won.pixels, won.mask, won.quality, inverted=first.inverted, zoomed=won.zoomed, warnings=list(first.warnings)), turns
