"""What the page and the API know about the patient besides the image: the DICOM header fields the page
prefills (sex, birth and study dates, age) and the chronological age from a form (months, or two dates)."""

from __future__ import annotations

import warnings
from datetime import date
from pathlib import Path

from edgeba.errors import InputError
from edgeba.io import _parse_age

DAYS_PER_MONTH = 30.4375  # the mean Gregorian month, as edgeba.io converts DICOM ages in days and weeks
MAX_AGE_MONTHS = 240.0  # bone age is defined for children; the model knows 0-20 years


def _dicom_date(value) -> str | None:
    """DICOM DA 'YYYYMMDD' -> 'YYYY-MM-DD' (what an HTML date input takes), else None."""
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])).isoformat()
    except (TypeError, ValueError, IndexError):
        return None


def dicom_fields(path: Path) -> dict:
    """The header fields the page prefills; {"dicom": False} for any file pydicom cannot read as DICOM.
    Reads the header only (stops before the pixel data), so it is cheap even for a large file."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-conformant tags are common and irrelevant here
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # pydicom raises many types for a non-DICOM file; none of them is an error here
            return {"dicom": False}
    sex = {"M": "male", "F": "female"}.get(str(ds.get("PatientSex", "") or "").upper())
    return {
        "dicom": True,
        "sex": sex,
        "birth_date": _dicom_date(str(ds.get("PatientBirthDate", "") or "")),
        "study_date": _dicom_date(str(ds.get("StudyDate", "") or ds.get("AcquisitionDate", "") or "")),
        "age_months": _parse_age(str(ds.get("PatientAge", "") or "")),
    }


def _parse_date(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"{what} {value!r} is not a date (YYYY-MM-DD)") from None


def chronological_age(age_months: str | None, birth_date: str | None, study_date: str | None) -> float | None:
    """Months from the form: `age_months`, or the days between birth and study date; None when none is
    given. InputError for anything inconsistent, so a typo never becomes a silent wrong difference."""
    age_months, birth_date, study_date = ((v or "").strip() or None for v in (age_months, birth_date, study_date))
    if age_months is not None:
        if birth_date or study_date:
            raise InputError("give the chronological age either in months or as two dates, not both")
        try:
            months = float(age_months)
        except ValueError:
            raise InputError(f"chronological age {age_months!r} is not a number of months") from None
    elif birth_date is None and study_date is None:
        return None
    elif birth_date is None or study_date is None:
        raise InputError("for the chronological age give both the date of birth and the study date")
    else:
        born, studied = _parse_date(birth_date, "date of birth"), _parse_date(study_date, "study date")
        if studied < born:
            raise InputError(f"the study date {studied} is before the date of birth {born}")
        months = (studied - born).days / DAYS_PER_MONTH
    if not 0.0 <= months <= MAX_AGE_MONTHS:
        raise InputError(f"chronological age {months:.1f} months is outside 0-{MAX_AGE_MONTHS:.0f} months")
    return months
