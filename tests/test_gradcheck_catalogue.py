"""Every layer and every zoo model of `hfmeta gradcheck`, float64, relative error < 1e-6."""
import pytest

from hfmeta import gradcheck
from hfmeta.gradcheck_cases import LAYER_CASES, MODEL_CASES, check_layer_case, check_model_case


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_case(case):
    results = check_layer_case(*case)
    assert {r.check for r in results} == {"rop", "backward", "adjoint", "bwd-rop"}
    gradcheck.assert_all_ok(results)


@pytest.mark.parametrize("case", MODEL_CASES,
                         ids=[f"{c[0]}-{c[1][1]}px-{'train' if c[4] else 'eval'}" for c in MODEL_CASES])
def test_model_case(case):
    results = check_model_case(*case)
    gradcheck.assert_all_ok(results)


def test_model_cases_run_every_convolution_algorithm():
    """"auto" picks the algorithm from the shapes, so the catalogue's model sizes
    decide which ones the model-level checks see: all three."""
    from hfmeta.layers import Conv2d
    from hfmeta.models import build
    seen = set()
    for name, in_shape, classes, options, _ in MODEL_CASES:
        model = build(name, in_shape, classes, dtype="float64", **options)
        seen |= {layer.chosen_algorithm for _, layer in model.net.leaves()
                 if isinstance(layer, Conv2d)}
    assert seen == {"im2col", "fft", "shift"}
