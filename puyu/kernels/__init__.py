"""puyu's own CPU kernels: C compiled once per machine and registered as torch ops (:mod:`puyu.kernels.build`).

- :mod:`puyu.kernels.gemv` — int4/int8 weight-only matrix products (the ``avx2`` quantization kernel);
- :mod:`puyu.kernels.attention` — decode attention straight from the paged key/value cache;
- :mod:`puyu.kernels.cross_entropy` — the training loss's softmax cross-entropy and its gradient, one pass a row;
- :mod:`puyu.kernels.rms_norm`, :mod:`puyu.kernels.rope` — RMSNorm and RoPE for training, one pass each way.
"""
