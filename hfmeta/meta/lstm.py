"""Coordinate-wise stacked LSTM with back-propagation through time written by hand.

The learned optimizers of hfmeta (MLHF's RNN_s and RNN_p, L2L, SLSTM) are
*coordinate-wise* recurrent nets (Andrychowicz et al. 2016, section 2.1): one
small LSTM whose meta-parameters ``theta`` are shared by every coordinate of a
parameter group, while each coordinate keeps its own hidden state.  The
coordinates are the rows of a batch, so one step is a handful of GEMMs on
(n, ·) arrays with n up to millions.

Shapes (index letters): n rows (coordinates), i inputs of a layer, h units of
a layer, o outputs.  ``x`` (n, i0), per layer ``h, c`` (n, h), output (n, o).

One layer, gate order **i, f, g, o** (as PyTorch's ``nn.LSTM``)::

    z  = [x, h_prev]                        (n, i + h)   the layer's inputs
    a  = z Wᵀ + b                           (n, 4h)      W (4h, i + h), b (4h)
    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
    c  = f ⊙ c_prev + i ⊙ g
    h  = o ⊙ tanh(c)

``W = [W_x | W_h]`` is PyTorch's ``weight_ih_l*`` and ``weight_hh_l*`` side by
side (one bias instead of PyTorch's two).  Layer l+1 takes layer l's ``h`` as
its ``x``; the raw output is a dense map of the last ``h``:
``out = h_L W_outᵀ + b_out`` (post-processing, e.g. softplus, lives in
:mod:`hfmeta.meta.preprocess`).  The forget-gate bias starts at 1
(Gers et al. 2000; Jozefowicz et al. 2015).

Two tricks keep a step at one GEMM and few passes over (n, 4h):

* the bias rides in the GEMM: ``z`` carries a ones column, ``a = [x, h_prev, 1] [W | b]ᵀ``
  (so ``b̄ = Σ_n ā`` also falls out of the ``W̄`` GEMM);
* σ(a) = (1 + tanh(a/2)) / 2, so all four gates are *one* tanh of a
  pre-activation computed with the i, f, o rows of ``[W | b]`` halved,
  followed by a per-column scale and offset.

Backward of the output map, given the output cotangent ``out̄`` (n, o)::

    W̄_out += out̄ᵀ h_L,   b̄_out += Σ_n out̄,   h̄_L = out̄ W_out

Backward (per layer, given ``h̄`` and ``c̄`` arriving from above and from the
next step)::

    ō = h̄ ⊙ tanh c;   c̄ ← c̄ + h̄ ⊙ o ⊙ (1 − tanh² c)
    ī = c̄ ⊙ g;  f̄ = c̄ ⊙ c_prev;  ḡ = c̄ ⊙ i;  c̄_prev = c̄ ⊙ f
    ā = [ī σ'(i), f̄ σ'(f), ḡ (1 − g²), ō σ'(o)]   with σ' = s (1 − s)
      (computed for all blocks at once as ā ⊙ (1 − gates) ⊙ (gates + low),
       low = 0 for σ and 1 for tanh)
    [W̄ | b̄] += āᵀ [x, h_prev, 1];   z̄ = ā W = [x̄, h̄_prev]

**Cache of one step** (per layer): only ``z`` (i + h + 1) and ``c_prev``
(h): Σ_l (i_l + 2 h_l + 1) numbers per row.  The gate activations and
``tanh c`` are *recomputed* in backward (one more GEMM per layer and step,
about the cost of the forward step), which cuts the cache 2.6-fold for MLHF:
3 inputs, two layers of 4 units give 12 + 13 = 25 numbers, 100 bytes per
coordinate per step in float32 -- 1.76 GB for an unroll of 10 of one RNN on
the 1.76M-parameter convnet instead of 4.6 GB (the meta-training unroll keeps
the caches of both RNNs for all T steps).
"""
from __future__ import annotations

import numpy as np

from .. import backend


class CoordinateLSTM:
    """A stacked LSTM applied independently to every row of a batch.

    Parameters
    ----------
    n_inputs : int
        Features per coordinate (after preprocessing).
    hidden : tuple of int
        Units of each stacked layer, e.g. ``(4, 4)`` for MLHF, ``(20, 20)`` for L2L.
    n_outputs : int
        Outputs per coordinate of the final dense map.

    The meta-parameters are one flat vector ``theta`` of length :attr:`size`;
    :meth:`views` gives the named, reshaped pieces (``layer0.weight`` (4h, i + h),
    ``layer0.bias`` (4h), ..., ``out.weight`` (o, h_L), ``out.bias`` (o)).
    """

    def __init__(self, n_inputs: int, hidden=(4, 4), n_outputs: int = 1):
        self.n_inputs = int(n_inputs)
        self.hidden = tuple(int(h) for h in hidden)
        self.n_outputs = int(n_outputs)
        if self.n_inputs < 1 or self.n_outputs < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"bad LSTM shape: inputs {n_inputs}, hidden {hidden}, outputs {n_outputs}")
        widths = (self.n_inputs,) + self.hidden
        self.specs = []                                   # (name, shape) in theta order
        for l, h in enumerate(self.hidden):
            self.specs.append((f"layer{l}.weight", (4 * h, widths[l] + h)))
            self.specs.append((f"layer{l}.bias", (4 * h,)))
        self.specs.append(("out.weight", (self.n_outputs, self.hidden[-1])))
        self.specs.append(("out.bias", (self.n_outputs,)))
        self.offsets = {}
        offset = 0
        for name, shape in self.specs:
            self.offsets[name] = offset
            offset += int(np.prod(shape))
        self.size = offset
        # σ(a) = ½ + ½ tanh(a/2): per-column scale (½ for i, f, o; 1 for g) and offset
        self._gate_scale = [np.repeat([0.5, 0.5, 1.0, 0.5], h) for h in self.hidden]
        self._gate_shift = [np.repeat([0.5, 0.5, 0.0, 0.5], h) for h in self.hidden]
        # lower end of each gate's range, negated: σ' = (s + 0)(1 − s), tanh' = (g + 1)(1 − g)
        self._gate_low = [np.repeat([0.0, 0.0, 1.0, 0.0], h) for h in self.hidden]

    def config(self) -> dict:
        """JSON-serialisable constructor arguments."""
        return {"n_inputs": self.n_inputs, "hidden": list(self.hidden), "n_outputs": self.n_outputs}

    def __repr__(self):
        return (f"CoordinateLSTM(n_inputs={self.n_inputs}, hidden={self.hidden}, "
                f"n_outputs={self.n_outputs})  # {self.size} meta-parameters")

    # -- meta-parameters ------------------------------------------------------
    def views(self, theta) -> dict:
        """``{name: reshaped view of theta}`` (no copies)."""
        return {name: theta[self.offsets[name]:self.offsets[name] + int(np.prod(shape))].reshape(shape)
                for name, shape in self.specs}

    def init(self, rng: np.random.Generator, xp=np, dtype=np.float64, out_bias: float = 0.0):
        """Draw ``theta`` on the host in float64, then cast/move it.

        Weights ~ U(−1/√h, 1/√h) (PyTorch's LSTM and Linear default), gate
        biases 0 except the forget gate's 1, output bias ``out_bias``.
        """
        theta = np.zeros(self.size)
        p = self.views(theta)
        for l, h in enumerate(self.hidden):
            p[f"layer{l}.weight"][...] = rng.uniform(-1, 1, p[f"layer{l}.weight"].shape) / np.sqrt(h)
            p[f"layer{l}.bias"][h:2 * h] = 1.0
        p["out.weight"][...] = rng.uniform(-1, 1, p["out.weight"].shape) / np.sqrt(self.hidden[-1])
        p["out.bias"][...] = out_bias
        return xp.asarray(theta, dtype=dtype)

    def zero_state(self, n_rows: int, xp=np, dtype=np.float64) -> list:
        """``[(h, c), ...]`` per layer, zeros of shape (n, h)."""
        return [(xp.zeros((n_rows, h), dtype=dtype), xp.zeros((n_rows, h), dtype=dtype))
                for h in self.hidden]

    # -- forward --------------------------------------------------------------
    def step(self, theta, state, x, out=None, keep_cache=True):
        """One time step for all rows.

        ``x`` (n, i0), ``state`` from :meth:`zero_state` or a previous step.
        Returns ``(out, new_state, cache)`` with ``out`` (n, o) the raw dense
        output, written into ``out`` if given (e.g. a row slice of a larger array).
        ``keep_cache=False`` (inference: no backward will follow) returns
        ``cache = None`` and builds each block's ``zᵀ`` in a small reused
        buffer instead of full (i + h + 1, n) arrays (less memory traffic).

        The step runs *feature-major*: ``zᵀ`` (i + h + 1, n) and the gates
        ``aᵀ = [W | b] zᵀ`` (4h, n), so each gate is a contiguous block of rows
        and every elementwise pass streams through memory (row-major (n, 4h)
        gates would make each gate a strided quarter of every row); and it
        runs over blocks of :attr:`CHUNK` rows, every layer and the output map
        in turn, so the gates of a block stay in the CPU cache between the
        passes.  An F-ordered ``x`` (:func:`~hfmeta.meta.preprocess.build_inputs`
        makes one) is read as contiguous rows of ``xᵀ``.  With the cache, layer
        l's ``hᵀ`` is written straight into the ``x`` rows of layer l + 1's ``zᵀ``; the
        returned states and the cached ``z`` are (n, ·) *views* (Fortran order)
        of (·, n) arrays, so the next step reads them without a copy.
        """
        xp = backend.get_array_module(x)
        p = self.views(theta)
        n, dtype = x.shape[0], x.dtype
        L = len(self.hidden)
        widths = (x.shape[1],) + self.hidden
        block = self.CHUNK if xp is np else max(n, 1)     # a GPU wants few, large kernels
        z_cols = n if keep_cache else min(block, n)      # keep_cache=False: one block's zᵀ
        zts = [xp.empty((widths[l] + h + 1, z_cols), dtype=dtype) for l, h in enumerate(self.hidden)]
        for zt in zts:
            zt[-1] = 1                               # the ones row: the bias rides in the GEMM
        cts = [xp.empty((h, n), dtype=dtype) for h in self.hidden]
        if keep_cache:
            # hᵀ of layer l lives in the first rows of zᵀ of layer l + 1 (the last layer's alone)
            hts = [zts[l + 1][:h] for l, h in enumerate(self.hidden[:-1])]
            hts.append(xp.empty((self.hidden[-1], n), dtype=dtype))
        else:
            hts = [xp.empty((h, n), dtype=dtype) for h in self.hidden]
        w_bs = [self._scaled_w_b(xp, p, l, dtype) for l in range(L)]
        in_place = out is not None and out.T.flags.c_contiguous
        if in_place:
            y = out.T                                # (o, n): write the output in place
        else:
            y = xp.empty((self.n_outputs, n), dtype=dtype)
        gates = xp.empty((max(4 * h for h in self.hidden), min(block, n)), dtype=dtype)
        xt = x.T
        for a in range(0, n, block):
            rows = slice(a, min(a + block, n))
            m = rows.stop - a
            for l, (h_prev, c_prev) in enumerate(state):
                zt = zts[l][:, rows] if keep_cache else zts[l][:, :m]   # zᵀ = [x, h_prev, 1]ᵀ
                if l == 0:
                    zt[:widths[0]] = xt[:, rows]
                elif not keep_cache:
                    zt[:widths[l]] = hts[l - 1][:, rows]
                zt[widths[l]:-1] = h_prev[rows].T
                self._layer_forward_t(xp, w_bs[l], self.hidden[l], zt, c_prev[rows].T,
                                      cts[l][:, rows], hts[l][:, rows], gates[:4 * self.hidden[l], :m])
            xp.matmul(p["out.weight"], hts[-1][:, rows], out=y[:, rows])
        y += p["out.bias"][:, None]
        new_state = [(ht.T, ct.T) for ht, ct in zip(hts, cts)]
        cache = [(zt.T, c_prev) for zt, (_, c_prev) in zip(zts, state)] if keep_cache else None
        if out is None:
            return y.T, new_state, cache
        if not in_place:
            out[...] = y.T
        return out, new_state, cache

    #: rows per block of :meth:`step` on the CPU; CuPy runs all rows at once.  A
    #: block's working set (MLHF: 16 gate rows, 8-9 rows of zᵀ, the states'
    #: 4 + 4 + 4 rows) is ~40 · CHUNK floats: 5120 rows keep it in a 1 MiB L2
    #: cache with the fewest blocks (convnet, two RNN steps of MLHF: 4096 rows
    #: 155 ms, 5120 and 6144 rows 145 ms, 7168 rows 168 ms on the dev machine)
    CHUNK = 5120

    def _tables(self, xp, dtype, l):
        """Layer ``l``'s gate tables as ``xp`` arrays of ``dtype``, made once per array
        module and dtype (a host-to-device copy on every call would synchronise the GPU):
        ``scale``, ``shift``, ``low`` (4h,) in gate order i, f, g, o, and ``scale_ifog``
        (4h, 1) in the order i, f, o, g of :meth:`_scaled_w_b`."""
        key = (xp.__name__, np.dtype(dtype).str)
        cache = self.__dict__.setdefault("_table_cache", {})
        if key not in cache:
            tables = []
            for scale, shift, low in zip(self._gate_scale, self._gate_shift, self._gate_low):
                H = scale.size // 4
                ifog = np.r_[scale[:2 * H], scale[3 * H:], scale[2 * H:3 * H]][:, None]
                tables.append({name: xp.asarray(a, dtype=dtype) for name, a in
                               (("scale", scale), ("shift", shift), ("low", low),
                                ("scale_ifog", ifog))})
            cache[key] = tables
        return cache[key][l]

    def _scaled_w_b(self, xp, p, l, dtype):
        """``[W | b]`` of layer ``l``, rows reordered to i, f, o, g, with the
        i, f, o rows halved (σ(a) = ½ + ½ tanh(a/2))."""
        H = self.hidden[l]
        w_b = xp.concatenate([p[f"layer{l}.weight"], p[f"layer{l}.bias"][:, None]], axis=1)
        ifog = xp.concatenate([w_b[:2 * H], w_b[3 * H:], w_b[2 * H:3 * H]])
        return ifog * self._tables(xp, dtype, l)["scale_ifog"]

    @staticmethod
    def _layer_forward_t(xp, w_b, H, zt, c_prev_t, c_out, h_out, gates):
        """Feature-major forward of one layer on a block: ``zᵀ`` (i + h + 1, m),
        ``c_prevᵀ`` (h, m) -> ``cᵀ``, ``hᵀ`` written into ``c_out``, ``h_out`` (h, m).
        ``w_b`` from :meth:`_scaled_w_b` (gate rows i, f, o, g); ``gates`` a
        (4h, m) scratch buffer."""
        xp.matmul(w_b, zt, out=gates)               # (4h, m)
        xp.tanh(gates, out=gates)
        sig = gates[:3 * H]                         # σ(a) = ½ + ½ tanh(a/2) on i, f, o at once
        sig *= 0.5
        sig += 0.5
        i, f, o, g = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
        xp.multiply(f, c_prev_t, out=c_out)
        i *= g
        c_out += i
        xp.tanh(c_out, out=g)                       # g is no longer needed: tanh c
        xp.multiply(o, g, out=h_out)

    def _layer_forward(self, xp, p, l, z, c_prev):
        """Row-major forward of layer ``l`` for the backward's recomputation:
        ``(gates, c, tanh c, h)`` with the gates (n, 4h) = [σ(a_i), σ(a_f), tanh(a_g), σ(a_o)]."""
        H = self.hidden[l]
        tables = self._tables(xp, z.dtype, l)
        scale = tables["scale"]
        w_b = xp.concatenate([p[f"layer{l}.weight"], p[f"layer{l}.bias"][:, None]], axis=1)
        gates = z @ (w_b * scale[:, None]).T        # [W | b] with the i, f, o rows halved
        xp.tanh(gates, out=gates)
        gates *= scale
        gates += tables["shift"]
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        c = f * c_prev
        c += i * g
        tanh_c = xp.tanh(c)
        return gates, c, tanh_c, o * tanh_c

    # -- backward -------------------------------------------------------------
    def backward_step(self, theta, cache, d_out, d_state, d_theta=None):
        """Reverse one :meth:`step`.

        ``d_out`` (n, o) or None: cotangent of this step's output.
        ``d_state``: ``[(h̄, c̄), ...]`` cotangent of the state this step
        produced (from the next step's backward), or None.  Either element of a
        pair may also be None.  Parameter cotangents are **added** into
        ``d_theta`` (a zero vector is made when None).

        Returns ``(d_theta, d_x, d_state_prev)``: ``d_x`` (n, i0) (a view of a
        larger array) and the cotangent of the state this step started from.
        """
        xp = backend.get_array_module(theta)
        if d_theta is None:
            d_theta = xp.zeros_like(theta)
        p, dp = self.views(theta), self.views(d_theta)
        L = len(self.hidden)
        d_state = d_state if d_state is not None else [(None, None)] * L
        # recompute what the forward did not keep: gates and tanh c per layer
        full = []
        for l, (z, c_prev) in enumerate(cache):
            gates, _, tanh_c, _ = self._layer_forward(xp, p, l, z, c_prev)
            full.append((z, gates, c_prev, tanh_c))
        dh = None
        if d_out is not None:
            _, gates, _, tanh_c = full[-1]
            h_last = gates[:, 3 * self.hidden[-1]:] * tanh_c
            dp["out.weight"][...] += d_out.T @ h_last
            dp["out.bias"][...] += d_out.sum(axis=0)
            dh = d_out @ p["out.weight"]
        d_state_prev = [None] * L
        for l in reversed(range(L)):
            dh = backend.add_optional(dh, d_state[l][0])
            dz, dc_prev = self._layer_backward(xp, p, dp, l, full[l], dh, d_state[l][1])
            n_in = dz.shape[1] - self.hidden[l]     # dz = [x̄, h̄_prev]
            d_state_prev[l] = (dz[:, n_in:], dc_prev)
            dh = dz[:, :n_in]
        return d_theta, dh, d_state_prev

    def _layer_backward(self, xp, p, dp, l, cache, dh, dc):
        z, gates, c_prev, tanh_c = cache
        H = self.hidden[l]
        if dh is None:
            dh = xp.zeros_like(tanh_c)
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        da = xp.empty_like(gates)
        da_i, da_f, da_g, da_o = (da[:, k * H:(k + 1) * H] for k in range(4))
        xp.multiply(dh, tanh_c, out=da_o)                  # h = o tanh c
        dc_total = dh * o
        dc_total *= 1 - tanh_c * tanh_c
        if dc is not None:
            dc_total += dc
        xp.multiply(dc_total, g, out=da_i)                 # c = f c_prev + i g
        xp.multiply(dc_total, c_prev, out=da_f)
        xp.multiply(dc_total, i, out=da_g)
        dc_total *= f                                      # now c̄_prev
        # through the nonlinearities, all four blocks in two passes:
        # σ' = (0 + s)(1 − s) on i, f, o and tanh' = (1 + g)(1 − g) on g
        da *= 1 - gates
        da *= gates + self._tables(xp, gates.dtype, l)["low"]
        d_w_b = da.T @ z                            # [W̄ | b̄]: the ones column sums ā over rows
        dp[f"layer{l}.weight"][...] += d_w_b[:, :-1]
        dp[f"layer{l}.bias"][...] += d_w_b[:, -1]
        return da @ p[f"layer{l}.weight"], dc_total

    def backward(self, theta, caches, d_outs, d_final_state=None):
        """Back-propagation through time over an unroll of T steps.

        ``caches``: the T caches of :meth:`step` in forward order; ``d_outs``:
        T output cotangents (None where a step's output has none);
        ``d_final_state``: cotangent of the last state, or None.

        Returns ``(d_theta, d_xs, d_initial_state)`` with ``d_xs`` the T input
        cotangents (n, i0).
        """
        if len(caches) != len(d_outs):
            raise ValueError(f"{len(caches)} caches but {len(d_outs)} output cotangents")
        xp = backend.get_array_module(theta)
        d_theta = xp.zeros_like(theta)
        d_xs = [None] * len(caches)
        d_state = d_final_state
        for t in reversed(range(len(caches))):
            _, d_xs[t], d_state = self.backward_step(theta, caches[t], d_outs[t], d_state, d_theta)
        return d_theta, d_xs, d_state
