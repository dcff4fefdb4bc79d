"""Every layer and every zoo model of `hfmeta gradcheck`, float64, relative error < 1e-6;
the command on the chosen device, its output streams and its checks of its options."""
import pytest
from click.testing import CliRunner

from hfmeta import backend, gradcheck
from hfmeta.cli import cli
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


# ---------------------------------------------------------------------------------------
# the ``hfmeta gradcheck`` command
# ---------------------------------------------------------------------------------------

def test_the_catalogue_runs_on_the_chosen_device(gpu, monkeypatch):
    """``hfmeta --device gpu gradcheck``: every finite difference is taken on the device
    (the strict stand-in refuses host/device mixing as CuPy does), still float64."""
    seen = set()
    difference = gradcheck.directional_difference

    def spy(f, theta, v, h):
        seen.add((backend.device_of(theta), str(theta.dtype)))
        return difference(f, theta, v, h)
    monkeypatch.setattr(gradcheck, "directional_difference", spy)
    r = CliRunner().invoke(cli, ["-q", "--device", "gpu", "gradcheck"])
    assert r.exit_code == 0, r.output
    assert " 0 failed" in r.stdout and seen == {("gpu", "float64")}


def test_device_gpu_without_cupy_is_the_usual_one_line_error(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    r = CliRunner().invoke(cli, ["--device", "gpu", "gradcheck", "-k", "linear"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith("hfmeta: error: --device gpu needs CuPy"), lines[0]


def test_progress_goes_to_stderr_and_the_table_to_stdout():
    r = CliRunner().invoke(cli, ["gradcheck", "-k", "relu"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("what ") and "checking" not in r.stdout, r.stdout
    assert "checking" in r.stderr


def test_no_layers_and_no_models_is_a_usage_error_saying_so():
    r = CliRunner().invoke(cli, ["gradcheck", "--no-layers", "--no-models"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "--no-layers" in lines[0] and "--no-models" in lines[0], lines[0]
