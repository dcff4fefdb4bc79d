"""What the meta-training loops share (hfmeta.meta.common): MetaAdam against a hand-written
Adam, global-norm clipping, and the experience-replay buffer (float64, tiny)."""
import math

import numpy as np
import pytest

from hfmeta.meta.common import MetaAdam, ReplayBuffer, clip_by_global_norm


def _hand_adam(theta, grads, lr, l2, max_norm, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba's Adam, written out: ĝ = clip(g + l2·θ) (the L2 term is clipped with the
    rest, as in the released MLHF code), bias-corrected moments.  Returns θ and the norms."""
    m, v, norms = np.zeros_like(theta), np.zeros_like(theta), []
    for t, grad in enumerate(grads, 1):
        g = grad + l2 * theta
        norm = math.sqrt(sum(x * x for x in g))
        norms.append(norm)
        if norm > max_norm:
            g = g * (max_norm / norm)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        theta = theta - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return theta, norms


def test_meta_adam_matches_hand_written_adam_with_l2_and_clipping():
    """Three updates with a large l2 (so the sign of the L2 term shows): the first gradient
    is long and clipped (the L2 term with it), the others short and used as they are; the
    moments are bias-corrected, and each update reports the norm of g + l2·θ before clipping."""
    rng = np.random.default_rng(0)
    theta0 = rng.standard_normal(5)
    grads = [3.0 * rng.standard_normal(5), 0.05 * rng.standard_normal(5),
             -0.04 * rng.standard_normal(5)]
    lr, l2, max_norm = 0.01, 0.1, 1.0
    expected, norms = _hand_adam(theta0, grads, lr, l2, max_norm)
    assert norms[0] > max_norm and max(norms[1:]) < max_norm     # one clipped, two not
    adam = MetaAdam(5, lr=lr, l2=l2, max_norm=max_norm)
    theta, got = theta0.copy(), []
    for grad in grads:
        theta, norm = adam.update(theta, grad.copy())
        got.append(norm)
    np.testing.assert_allclose(theta, expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got, norms, rtol=1e-12)
    assert adam.t == 3


def test_meta_adam_first_step_moves_against_the_regularised_gradient():
    """Step 1 of Adam is lr · ĝ / (|ĝ| + ε) ≈ lr · sign(ĝ): with a zero gradient the step is
    pure weight decay, θ ← θ − lr · sign(l2 · θ), i.e. towards zero."""
    theta = np.array([2.0, -3.0, 0.5])
    new, norm = MetaAdam(3, lr=0.1, l2=0.1, max_norm=1.0).update(theta, np.zeros(3))
    assert norm == pytest.approx(0.1 * math.sqrt(4 + 9 + 0.25), rel=1e-12)
    np.testing.assert_allclose(new, theta - 0.1 * np.sign(theta), rtol=0, atol=1e-7)


def test_clip_by_global_norm_only_shortens():
    """A gradient longer than max_norm is scaled in place to norm max_norm; a shorter one
    (and any with max_norm 0 or None) is left exactly as it is; the norm before is returned."""
    long = np.array([3.0, 4.0])
    assert clip_by_global_norm(long, 2.5) == 5.0
    np.testing.assert_allclose(long, [1.5, 2.0], rtol=1e-15)
    for max_norm in (10.0, 5.0, 0, None):
        short = np.array([3.0, 4.0])
        assert clip_by_global_norm(short, max_norm) == 5.0
        np.testing.assert_array_equal(short, [3.0, 4.0])


def test_replay_buffer_drops_the_oldest_beyond_capacity_and_keeps_copies():
    """capacity 3, four stores: the first is gone, the last three are kept in order;
    the buffer holds copies (changing the stored array later changes nothing)."""
    buf = ReplayBuffer(capacity=3)
    ws = [np.full(2, float(k)) for k in range(4)]
    for w in ws:
        buf.store(w)
    assert len(buf) == 3
    assert [float(item[0]) for item in buf.items] == [1.0, 2.0, 3.0]
    ws[3][:] = -1.0
    assert float(buf.items[-1][0]) == 3.0


def test_replay_buffer_samples_fresh_with_probability_one_over_n_plus_one():
    """n = 3 stored states: over N draws each of the n + 1 outcomes (3 states, fresh) has
    probability 1/4; each count lies within 5 binomial standard deviations of N/4.  An
    empty buffer always gives fresh(); a stored state comes back as a copy."""
    buf = ReplayBuffer(capacity=10)
    assert float(buf.sample(np.random.default_rng(0), lambda: np.array([7.0]))[0]) == 7.0
    for k in range(3):
        buf.store(np.array([float(k)]))
    rng = np.random.default_rng(1)
    n_draws = 4000
    counts = {0.0: 0, 1.0: 0, 2.0: 0, -1.0: 0}
    for _ in range(n_draws):
        counts[float(buf.sample(rng, lambda: np.array([-1.0]))[0])] += 1
    p = 1 / 4
    sd = math.sqrt(n_draws * p * (1 - p))
    for outcome, count in counts.items():
        assert abs(count - n_draws * p) < 5 * sd, (outcome, counts)
    got = buf.sample(np.random.default_rng(1), lambda: None)     # this seed: a stored one
    assert got is not None
    got[:] = 99.0
    assert [float(item[0]) for item in buf.items] == [0.0, 1.0, 2.0]
