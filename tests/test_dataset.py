"""The fixed split: complete, disjoint, stratified and reproducible from its seed."""

from collections import Counter

from edgeba import dataset


def test_split_covers_every_training_image_once():
    cases = dataset.cases()
    assert len(cases) == 1338
    assert len({c.id for c in cases}) == 1338
    assert Counter(c.split for c in cases) == {"train": 935, "tune": 134, "val": 269}
    assert all(c.image_path.is_file() for c in cases[:20])


def test_split_is_reproducible_from_its_seed():
    rows = dataset.make_split()
    assert [(r["id"], r["split"]) for r in rows] == [(c.id, c.split) for c in dataset.cases()]


def test_split_is_stratified_by_age_band_and_sex():
    cases = dataset.cases()
    for band in range(len(dataset.AGE_BAND_NAMES)):
        for male in (0, 1):
            group = [c for c in cases if dataset.age_bin(c.boneage_months) == band and c.male == male]
            n_val = sum(c.split == "val" for c in group)
            assert abs(n_val - 0.2 * len(group)) <= 1, (band, male, n_val, len(group))


def test_age_bands():
    assert [dataset.age_bin(m) for m in (0, 23.9, 24, 59, 60, 131, 132, 168, 228)] == [0, 0, 1, 1, 2, 3, 4, 5, 5]


def test_keypoints_and_rois_are_in_the_image_frame():
    kp = dataset.keypoints()
    assert len(kp) == 126
    first = next(iter(kp.values()))
    assert first["points"].shape == (21, 2)
    assert len(dataset.bone_roi_ids()) == 221
