"""The runtime pipeline: load -> segment (U-Net) -> mask QC -> preprocess -> regress, timed per stage.

A Predictor opens the model once (verified against its manifest) and then predicts file after file.
It never guesses: a model that needs the patient's sex gets it from the caller or the DICOM header,
or the prediction fails; a mask that fails QC is refused unless the caller forces it (then warned).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeba import conditions, film, interval, regress
from edgeba.backends import choose, default_threads, open_stage
from edgeba.errors import InputError, SegmentationError
from edgeba.hand import MIN_DETAIL, Hand, detail, is_hand, texture
from edgeba.io import Radiograph, load_image
from edgeba.manifest import load_manifest
from edgeba.orient import find_upright_hand, turn, upright
from edgeba.preprocess import crops_to_hand, input_configs, regressor_feeds, source_mask, work_image, work_side
from edgeba.reframe import reframe
from edgeba.segment import mask_from_prob, unet_input

SEXES = ("male", "female")
REORIENT_ON_PLATE = True  # Predictor._find_hand: a film on a bright plate searches its orientation again, painted


@dataclass
class Prediction:
    file: str
    bone_age_months: float
    sex: str | None  # the sex given to the model (None when the model does not use it)
    sex_source: str  # "argument", "dicom" or "unused"
    backend: str
    model: str
    timings_ms: dict[str, float]
    mask_quality: dict | None  # {"ok", "reasons", "metrics"}; None for a model without segmentation
    warnings: list[str]
    tta_views: int = 1  # regressor runs averaged (test-time augmentation)
    interval_months: list[float] | None = None  # 90 % prediction interval [lo, hi]; None: model not calibrated
    view_months: list[float] = field(default_factory=list)  # each regressor run's months (first = the plain view)
    inverted: bool = False  # the grey scale was flipped because the hand showed bone dark (edgeba/hand.py)
    unet_passes: int = 0  # U-Net runs this prediction made (orientation, inverse, zoom: edgeba/orient.py, hand.py)
    chronological_age_months: float | None = None
    bone_minus_chronological_months: float | None = None
    radiograph: Radiograph | None = field(default=None, repr=False)  # the working copy (preprocess.work_image), as scored
    mask: np.ndarray | None = field(default=None, repr=False)  # on the working copy
    # The file's own pixels turned, inverted and re-framed as the working copy was: the regressor's input is cut
    # from them, as in training (preprocess.regressor_feeds with source_mask).
    source_pixels: np.ndarray | None = field(default=None, repr=False)

    def source_mask(self) -> np.ndarray | None:
        """The mask on the source pixels' grid."""
        return None if self.mask is None else source_mask(self.mask, self.source_pixels.shape)

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "bone_age_months": round(self.bone_age_months, 2),
            "bone_age": regress.years_months(self.bone_age_months),
            "sex": self.sex,
            "sex_source": self.sex_source,
            "backend": self.backend,
            "model": self.model,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "mask_quality": self.mask_quality,
            "warnings": list(self.warnings),
            "tta_views": self.tta_views,
            "interval_months": self.interval_months,
            "inverted": self.inverted,
            "chronological_age_months": self.chronological_age_months,
            "bone_minus_chronological_months": (
                None if self.bone_minus_chronological_months is None else round(self.bone_minus_chronological_months, 2)
            ),
        }


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Predictor:
    def __init__(self, model_dir: str | Path | None = None, backend: str = "auto", threads: int | None = None,
                 tta: bool | None = None, images: int = 1):
        """`images`: how many radiographs this Predictor will see; `auto` weighs the backends' start-up
        against their time per image for that many (edgeba.backends.choose)."""
        t0 = time.perf_counter()
        self.manifest = load_manifest(model_dir)
        self.backend = choose(self.manifest, backend, images)
        self.threads = threads or default_threads()
        self.inputs = input_configs(self.manifest.data)
        self.cfg = self.inputs["image"]  # its unet_size is the U-Net's
        self.crops = crops_to_hand(self.inputs)
        self.work_side = work_side(self.inputs)
        self.crop_margin = next((c.margin for c in self.inputs.values() if c.segment), self.cfg.margin)  # for the overlay
        self.target = self.manifest.target
        # Test-time augmentation: the mean over the fixed views of edgeba.preprocess.TTA_VIEWS, when the
        # manifest says so (the model was validated with it) or the caller asks (`--precise`: 5x the
        # regressor's compute for a lower error; train/RESULTS.md measures it).
        self.tta = bool(self.manifest.data.get("tta", False)) if tta is None else tta
        # The U-Net runs whenever the model has one: it crops the hand (cfg.segment) and in any case
        # gates the input (no hand found -> refusal) and draws the QC overlay.
        self.unet = open_stage(self.manifest, "segment", self.backend, self.threads) if self.manifest.segments else None
        self.regressor = open_stage(self.manifest, "regress", self.backend, self.threads)
        self.formats = {"regress": self.regressor.format} | ({"segment": self.unet.format} if self.unet else {})
        self.load_ms = _ms(t0)
        self._unet_passes = 0
        self._resampled: list = []  # images of the radiograph being predicted, resampled for the U-Net (unet_input)

    def _sex(self, rad: Radiograph, sex: str | None, name: str) -> tuple[str | None, str, list[str]]:
        if sex is not None and sex not in SEXES:
            raise InputError(f"sex must be 'male' or 'female', got {sex!r}")
        if not self.manifest.sex_input:
            return None, "unused", []
        if sex is None and rad.sex is None:
            raise InputError(
                f"{name}: this model needs the patient's sex and the file does not record it; "
                "pass --sex male or --sex female"
            )
        if sex is None:
            return rad.sex, "dicom", []
        warn = [f"--sex {sex} overrides the file's PatientSex ({rad.sex})"] if rad.sex and rad.sex != sex else []
        return sex, "argument", warn

    def _segment(self, pixels: np.ndarray) -> np.ndarray:
        """One U-Net pass: the hand mask of `pixels` (the working copy, or a turned or cropped part of it)."""
        self._unet_passes += 1
        x, box = unet_input(pixels, self.cfg.unet_size, self._resampled)
        return mask_from_prob(self.unet.run({"image": x[None, :, :, None]}), box, pixels.shape)

    def _find_hand(self, stored: np.ndarray, polarity_known: bool):
        """(hand, turns) as orient.find_upright_hand; a film on a bright plate (conditions.bright_surround) whose hand was
        not found upright with a QC-passing outline looks for its orientation again with the plate painted dark: the
        U-Net outlines a hand on a bright plate poorly in any orientation, and turned films on a plate were scored
        sideways (train, 60 films x 3 turns: 24 of 180 right; 128 with this; tune unchanged; train/RESULTS.md, session
        14). Only another turn replaces the first search's hand: its outline, on the unpainted pixels turned the same
        way (the measures still see the plate, so the film stays flagged and is painted for the regressor as before)."""
        hand, turns = find_upright_hand(stored, self._segment, polarity_known)
        if not REORIENT_ON_PLATE or hand.inverted or not hand.mask.any():
            return hand, turns
        if (hand.quality.ok and upright(hand)) or not conditions.bright_film(hand.surround):
            return hand, turns
        painted = conditions.darken_plate(stored, turn(hand.mask, -turns))
        if painted is stored:
            return hand, turns
        again, turns2 = find_upright_hand(painted, self._segment, polarity_known)
        if turns2 == turns or again.inverted:
            return hand, turns
        return Hand(turn(stored, turns2), again.mask, again.quality, inverted=False, zoomed=again.zoomed, warnings=list(again.warnings)), turns2

    def predict(self, path: str | Path, sex: str | None = None, force: bool = False) -> Prediction:
        """One radiograph -> Prediction. Raises InputError / SegmentationError / ModelError."""
        timings: dict[str, float] = {}
        name = Path(path).name
        t_all = t0 = time.perf_counter()
        rad = load_image(path)
        # Segmentation, QC and the conditions work on a copy at most work_side px long (preprocess.work_image);
        # the regressor's input is cut from the file's own pixels (the models were fitted on crops of them).
        full = rad.pixels
        rad.pixels = work_image(full, self.work_side)
        # A collimated field or a small film on a plate is cut out first, and from then on treated as if the file were
        # the cut (edgeba/film.py): the regressor never saw what surrounds it, and the U-Net's outline suffers from it.
        cut = film.find_cut(rad.pixels)
        cut_box = None
        if cut is not None:
            cut_box = film.scaled_box(cut.box, rad.pixels.shape, full.shape)
            full = film.cut(full, cut_box)
            rad.pixels = work_image(full, self.work_side)
        timings["load"] = _ms(t0)
        used_sex, source, warnings = self._sex(rad, sex, name)
        warnings = list(rad.warnings) + warnings
        if cut is not None:
            y0, y1, x0, x1 = cut_box
            what = "the exposed field inside a bright collimation frame" if cut.kind == "field" else "the film, a small part of a larger plate"
            warnings.append(f"cut to {what} (rows {y0}-{y1}, columns {x0}-{x1} of the image)")

        mask, quality, inverted, flags = None, None, False, []
        self._unet_passes, self._resampled = 0, []
        if self.unet is not None:
            t0 = time.perf_counter()
            hand, turns = self._find_hand(rad.pixels, rad.polarity_known)
            timings["segment"] = _ms(t0)
            rad.pixels, mask, q, inverted = hand.pixels, hand.mask, hand.quality, hand.inverted
            as_loaded, full = full, turn(full, turns)
            if inverted:
                full = 1.0 - full
            warnings += hand.warnings
            if turns:
                warnings.append(f"turned the image {90 * turns} degrees counter-clockwise so the fingers point up")
            quality = {"ok": bool(q.ok), "reasons": list(q.reasons), "metrics": q.metrics | {"zoomed": hand.zoomed, "turned_degrees": 90 * turns, "bone_contrast": round(hand.contrast, 3) if np.isfinite(hand.contrast) else None,
                                                                                 "cut": None if cut is None else {"kind": cut.kind, "box": list(cut_box)}}}
            structure = detail(rad.pixels, mask)
            quality["metrics"]["detail"] = round(structure, 4)
            why = "; ".join(q.reasons + (["no bone structure inside the outline"] if structure < MIN_DETAIL else [])) or "mask failed the quality checks"
            if not is_hand(q, hand.contrast, texture(rad.pixels, mask), structure):
                if not force or not mask.any():
                    raise SegmentationError(f"{name}: no plausible hand found ({why})")
                warnings.append(f"segmentation failed quality checks ({why}); result forced, do not trust it")
            elif not q.ok:
                # A real hand is scored however it is framed; a poor outline is the reader's to check.
                where = "the model crops to it" if self.crops else "the model does not crop to it"
                warnings.append(f"hand mask failed quality checks ({why}); {where}, check the overlay")
            # Measured once the image is to be scored (a refusal needs none of it). Grain on the file's own pixels as
            # loaded: the flag's threshold was chosen at a file's resolution, and an area average hides grain.
            noise = conditions.noise_level(as_loaded)
            if conditions.noisy(noise):
                # The regressor sees a noisy film smoothed (conditions.denoise) on a copy DENOISE_SIDE px long. The hand
                # was found, or refused, in the image as loaded: smoothed noise can look like a hand to the U-Net
                # (tests/test_hand.py's non-hands).
                full = conditions.denoise(work_image(full, conditions.DENOISE_SIDE), noise)
            measured = conditions.measure(hand.surround, noise)
            quality["metrics"] |= {k: round(v, 4) for k, v in measured.items()}
            flags = conditions.flagged(measured)
            kept = False
            if any(c.name == "bright_surround" for c in flags):
                # The regressor never saw a bright surround (conditions.PLATE_DELTA).
                painted = conditions.darken_plate(full, source_mask(mask, full.shape))
                kept, full = painted is full, painted
            # A plate as bright as the hand is left as it is (conditions.PLATE_MAX_COVER): the warning must not say "painted".
            warnings += [(conditions.PLATE_KEPT if kept and c.name == "bright_surround" else c.warning).format(value=measured[c.name])
                         for c in flags]
        else:
            warnings.append("this model has no segmentation stage: nothing checked that the image shows a hand")

        t0 = time.perf_counter()
        # A small film's cut is framed by us, not by the film: it is always re-framed (when its outline can be trusted).
        small_film = cut is not None and cut.kind == "small_film"
        if mask is not None and quality["ok"] and not self.cfg.segment and (r := reframe(rad.pixels, mask, full, always=small_film)) is not None:
            # A whole-image model is only as good as the framing it was fitted on (edgeba/reframe.py); an
            # outline that failed QC is not one to move the image by.
            rad.pixels, mask, full = r.pixels, r.mask, r.source
            quality["metrics"]["reframed"] = True
            warnings.append(f"{r.why}: estimated on the hand turned upright and framed like a typical radiograph")
        views = regressor_feeds(full, source_mask(mask, full.shape) if self.crops else None, self.inputs, self.tta)
        timings["preprocess"] = _ms(t0)

        t0 = time.perf_counter()
        sex_feed = {"sex": np.array([[1.0 if used_sex == "male" else 0.0]], np.float32)} if self.manifest.sex_input else {}
        view_months = [regress.months(self.regressor.run(feeds | sex_feed), self.target) for feeds in views]
        age = float(np.mean(view_months))
        timings["regress"] = _ms(t0)
        timings["total"] = _ms(t_all)
        if (w := regress.plausibility_warning(age)) is not None:
            warnings.append(w)
        iv = interval.interval(self.manifest.data, age, view_months, tuple(c.name for c in flags))
        if iv is not None and (w := iv.warning()) is not None:
            warnings.append(w)

        diff = None if rad.age_months is None else age - rad.age_months
        return Prediction(
            file=str(path),
            bone_age_months=age,
            sex=used_sex,
            sex_source=source,
            backend=self.backend,
            model=self.manifest.name,
            timings_ms=timings,
            mask_quality=quality,
            warnings=warnings,
            tta_views=len(views),
            interval_months=None if iv is None else iv.as_list(),
            view_months=view_months,
            inverted=inverted,
            unet_passes=self._unet_passes,
            chronological_age_months=rad.age_months,
            bone_minus_chronological_months=diff,
            radiograph=rad,
            mask=mask,
            source_pixels=full,
        )
