import numpy as np
import pytest

from edgeba.errors import ModelError
from edgeba.regress import months, plausibility_warning, years_months


def test_months_undoes_the_target_scaling():
    assert months(np.array([[0.5]], np.float32), (127.0, 41.0)) == pytest.approx(147.5)
    assert months(np.array([[-1.0]]), (127.0, 41.0)) == pytest.approx(86.0)


@pytest.mark.parametrize("out", [np.array([[np.nan]]), np.zeros((1, 2)), np.zeros((0,))])
def test_months_refuses_non_scalar_or_nan(out):
    with pytest.raises(ModelError):
        months(out, (127.0, 41.0))


def test_years_months_and_plausibility():
    assert years_months(127.4) == "10 y 7 m" and years_months(11.6) == "1 y 0 m" and years_months(-13) == "-1 y 1 m"
    assert plausibility_warning(120.0) is None
    assert "outside" in plausibility_warning(300.0) and "outside" in plausibility_warning(-5.0)
