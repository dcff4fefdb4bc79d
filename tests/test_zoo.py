"""The model zoo: parameter counts, shapes, and the Gauss-Newton matrix of every model."""
import numpy as np
import pytest

from hfmeta.errors import UserError
from hfmeta.gradcheck_cases import MODEL_CASES
from hfmeta.losses import SoftmaxCrossEntropy
from hfmeta.models import ZOO, build
from hfmeta.params import KINDS
from hfmeta.problem import Problem


def test_convnet_has_the_papers_parameter_count():
    assert build("convnet", (3, 32, 32), 10).num_params == 1_756_426


# counts worked out by hand from the architectures in hfmeta/models.py
@pytest.mark.parametrize("name,in_shape,count", [
    ("mlp", (1, 28, 28), 235_146),
    ("cnn-small", (1, 28, 28), 31_786),
    ("cnn-big", (1, 28, 28), 106_890),
    ("convnet", (3, 32, 32), 1_756_426),
    ("resnet-mini", (3, 32, 32), 272_538),
    ("resnet18v2", (3, 32, 32), 11_172_170),
])
def test_parameter_counts(name, in_shape, count):
    model = build(name, in_shape, 10)
    assert model.num_params == count
    assert model.layout.size == sum(s.size for s in model.layout.specs)


def test_every_kind_is_one_contiguous_slice():
    layout = build("resnet-mini", (3, 16, 16), 10).layout
    seen = []
    for spec in layout.specs:
        if not seen or seen[-1] != spec.kind:
            assert spec.kind not in seen, f"kind {spec.kind} split in two"
            seen.append(spec.kind)
    assert seen == [k for k in KINDS if k in seen]
    w = np.arange(layout.size, dtype=float)
    for kind in layout.kinds:
        sl = layout.kind_slice(kind)
        names = [s.name for s in layout.specs if s.kind == kind]
        views = layout.views(w)
        assert np.concatenate([views[n].ravel() for n in names]).tolist() == w[sl].tolist()
        assert all(np.shares_memory(views[n], w) for n in names)     # views, not copies


@pytest.mark.parametrize("case", MODEL_CASES, ids=[f"{c[0]}-{'train' if c[4] else 'eval'}"
                                                   for c in MODEL_CASES])
def test_gauss_newton_is_symmetric_positive_semidefinite(case):
    name, in_shape, classes, options, train = case
    model = build(name, in_shape, classes, dtype="float64", **options)
    problem = Problem(model, SoftmaxCrossEntropy())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4,) + in_shape)
    state = None if train else model.init_state()
    lin = model.linearize(model.init(1), x, train, state)
    for _ in range(3):
        u, v = rng.standard_normal((2, model.num_params))
        Gu, Gv = problem.gvp(lin, u), problem.gvp(lin, v)
        assert abs(u @ Gv - v @ Gu) <= 1e-12 * (abs(u @ Gv) + 1e-300) + 1e-15
        assert v @ Gv >= -1e-12 * np.linalg.norm(v) * np.linalg.norm(Gv)


@pytest.mark.parametrize("name", list(ZOO))
def test_each_model_runs_forward_on_cifar_and_mnist_shapes(name):
    for in_shape in [(3, 32, 32), (1, 28, 28)]:
        model = build(name, in_shape, 10, dtype="float32")
        z = model.forward(model.init(0), np.zeros((2,) + in_shape, np.float32), True)
        assert z.shape == (2, 10) and z.dtype == np.float32


def test_bad_model_options_are_user_errors():
    with pytest.raises(UserError, match="unknown model"):
        build("vgg", (3, 32, 32), 10)
    with pytest.raises(UserError, match="bad option"):
        build("convnet", (3, 32, 32), 10, depth=3)
    with pytest.raises(UserError, match="does not fit"):
        build("cnn-big", (1, 3, 3), 10)


def test_resnet18v2_imagenet_stem_is_7x7_stride_2_then_3x3_max_pool_stride_2_pad_1():
    """He et al. 2016: 224 → conv 7×7/2 pad 3 → 112 → max-pool 3×3/2 pad 1 → 56, and the
    stages halve it to 28, 14, 7.  On 130 pixels the pool's padding shows: conv gives
    ⌊(130 + 6 − 7)/2⌋ + 1 = 65, the pool ⌊(65 + 2 − 3)/2⌋ + 1 = 33 (a 2×2/2 pool: 32).
    Shapes come from building the model, no forward pass."""
    for size, stem, pooled, final in ((224, 112, 56, 7), (130, 65, 33, 5)):
        net = build("resnet18v2", (3, size, size), 10, dtype="float64").net
        shapes = dict((name, layer.out_shape) for name, layer in net.children)
        assert shapes["conv_stem"] == (64, stem, stem)
        assert shapes["pool_stem"] == (64, pooled, pooled)
        assert shapes["stage4_block2"] == (512, final, final)
        assert shapes["fc"] == (10,)
