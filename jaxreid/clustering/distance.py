"""The support-set distance kernel: for each real image, its k nearest images of OTHER clusters.

Each real image i has a support set S_i = {r_i, f_i^1 .. f_i^(L-1)} (its camera-style fakes, which
carry i's cluster). The image-level distance of the paper (Eq. 5-8, in BUC's form; docs/method.md) is

  D(i, j) = min over counted pairs (x, y) in S_i x S_j of |x - y|^2  +  lambda * (n(i) + n(j)),

counted pairs being real-real and real-fake (the clustering constraint), or all of S_i x S_j when
the constraint is off; without fakes L = 1 and only real-real pairs exist.

With the constraint, D(i, j) = min(A(i, j), A(j, i)) for the DIRECTIONAL distance
A(i, j) = min_{y in S_j} |r_i - y|^2 + penalty: the real of one image against the support set of
the other. A row block of A costs one matmul [block, d] x [d, N * L] (the floor of any method), so
the kernel returns, per row i, the k + 1 smallest A(i, .) over other-cluster columns; the (k+1)-th
value bounds every entry the cut dropped, which is what the merge's exactness certificate needs
(see merge.py). Without the constraint A is symmetric and the rows carry the whole support set.

How it runs: the support features S [N, L, d] (slot 0 the real, then the fakes) and their squared
norms live on every device; on CPU, a C-contiguous, 64-byte aligned S (see `support_sets.aligned_empty`) is used
in place, without any copy. Rows are streamed in chunks of (devices x block) rows; each device takes
one block of `block` rows, computes one matmul [block, d] x [d, N * L] (columns (image, slot)-major)
and reduces it over each image's L slots as a chain of elementwise minima fused into one pass; then
adds the norms and the diversity term, masks same-cluster columns and takes the top k + 1. Memory is
O(block * N * L) per device besides the features, and only (rows, k + 1) values come back. The
block size depends on N and `block_size` only, never on the device count, and a row always sits at
the same offset of its block: each row sees the same matmul shape and summation order on 1 or 8
devices, so the results are bitwise identical.

Squared distances are |x|^2 + |y|^2 - 2 x.y in float32 (float32 accumulation also under the
bfloat16 option, where the norms are those of the rounded vectors so that the distance is that of
the vectors the matmul actually saw).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxreid import parallel
from jaxreid.support_sets import support_array

MATMUL_DTYPES = {'float32': np.float32, 'bfloat16': jnp.bfloat16}
# Block rows are a multiple of this, and a block never exceeds N / BLOCK_SPLIT rows (rounded up):
# small inputs do not pay for a mostly padded block. A constant, so blocks do not depend on devices.
_ROW_ALIGN = 8
_BLOCK_SPLIT = 8


def block_rows(num_images: int, block_size: int) -> int:
  """Rows per device block: `block_size`, less for small N; depends on N and block_size only."""
  per_split = -(-num_images // _BLOCK_SPLIT)
  return max(_ROW_ALIGN, min(int(block_size), -(-per_split // _ROW_ALIGN) * _ROW_ALIGN))




def _min_over(x: jax.Array, axis: int) -> jax.Array:
  """Min over a short axis as a chain of elementwise minima (XLA on CPU reduces a short minor axis
  about 10x slower than it fuses this chain)."""
  parts = [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]
  return functools.reduce(jnp.minimum, parts)


def _cross(x: jax.Array, y: jax.Array) -> jax.Array:
  """-2 x y^T in float32 for x [R, d], y [C, d]; HIGHEST keeps accelerators off TF32 for float32."""
  # Scaling by -2 is exact, so this is -2 * (x . y) to the last bit.
  return lax.dot_general((-2 * x).astype(x.dtype), y, (((1,), (1,)), ((), ())),
                         precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _block_topk(rows, flat, sq, labels, sizes, penalty, *, k: int, constraint: bool):
  """One device's block: the k + 1 smallest directional distances of `rows` to other clusters.

  flat [N * L, d] the support features (image, slot)-major, sq [N, L] their squared norms.
  """
  n, num_sets = sq.shape
  rows_c = jnp.clip(rows, 0, n - 1)  # padding rows (-1) compute garbage that the host drops

  def to_supports(x, sq_x):
    """min over S_j of |x - y|^2 for query vectors x [..., d] against every image j: [..., N]."""
    lead = x.shape[:-1]
    g = _cross(x.reshape(-1, x.shape[-1]), flat).reshape(-1, n, num_sets) + sq[None]
    return _min_over(g, 2).reshape(*lead, n) + sq_x[..., None]

  if constraint or num_sets == 1:
    a = to_supports(flat[rows_c * num_sets], sq[rows_c, 0])  # r_i against S_j
  else:
    # Every support image of i, slot-major, against S_j.
    x = flat.reshape(n, num_sets, -1)[rows_c]
    a = _min_over(to_supports(jnp.moveaxis(x, 1, 0), sq[rows_c].T), 0)
  a = a + penalty * (sizes[rows_c][:, None] + sizes[None, :])
  a = jnp.where(labels[rows_c][:, None] == labels[None, :], jnp.inf, a)
  neg, idx = lax.top_k(-a, k + 1)
  return -neg, idx.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('mesh', 'k', 'constraint'))
def _chunk_topk(rows, flat, sq, labels, sizes, penalty, *, mesh: Mesh, k: int, constraint: bool):
  """The per-chunk kernel: rows split over 'data', everything else replicated."""
  kernel = functools.partial(_block_topk, k=k, constraint=constraint)
  mapped = jax.shard_map(kernel, mesh=mesh, in_specs=(P(parallel.DATA_AXIS),) + (P(),) * 5,
                         out_specs=(P(parallel.DATA_AXIS), P(parallel.DATA_AXIS)))
  return mapped(rows, flat, sq, labels, sizes, penalty)


@jax.jit
def squared_norms(x: jax.Array) -> jax.Array:
  """float32 squared L2 norms over the last axis (the |a|^2 + |b|^2 - 2ab distance expansion)."""
  x = x.astype(jnp.float32)
  return jnp.sum(x * x, axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _cast(x: jax.Array, dtype) -> jax.Array:
  return x.astype(dtype)


def _in_dtype(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """x in the matmul dtype (a copy only when that differs) and the float32 squared norms of that
  rounded x."""
  if x.dtype != dtype:
    x = _cast(x, dtype)
  return x, squared_norms(x)


class SupportSetKernel:
  """The support sets of one merge step on the device mesh, queried for per-row top-k candidates.

  support [N, L, d] float32 (slot 0 the real image, slots 1.. its fakes; numpy, or a jax.Array
  that stays on the devices), labels [N] cluster ids
  (only equality matters), sizes [N] the real-image size of each image's cluster at the start of
  the step.
  """

  def __init__(self, support: np.ndarray | jax.Array, labels: np.ndarray, sizes: np.ndarray,
               size_penalty: float, constraint: bool = True, *, block_size: int = 512,
               matmul_dtype: str = 'float32', mesh: Mesh | None = None):
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    n, num_sets, d = support.shape
    self.num_images = n
    self.constraint = bool(constraint)
    self.block = block_rows(n, block_size)
    rep = parallel.replicated(self.mesh)
    if isinstance(support, jax.Array):
      # Already on the devices (features kept there): no host round trip; moved between devices
      # only when it is not replicated on this mesh.
      if not support.sharding.is_equivalent_to(rep, support.ndim):
        support = jax.device_put(support, rep)
      flat = support.reshape(n * num_sets, d)
    else:
      # A reshape of a C-contiguous S is a view, so an aligned S still goes to the device in place.
      flat = parallel.put_global(support.reshape(n * num_sets, d), rep)
    self.flat, sq = _in_dtype(flat, MATMUL_DTYPES[matmul_dtype])
    self.sq = sq.reshape(n, num_sets)
    self.labels = parallel.put_global(np.asarray(labels, np.int32), rep)
    self.sizes = parallel.put_global(np.asarray(sizes, np.float32), rep)
    self.penalty = parallel.put_global(np.asarray(size_penalty, np.float32), rep)
  def topk(self, rows: np.ndarray, k: int, desc: str = 'merge distances'
           ) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) [len(rows), k + 1]: the k + 1 smallest A(i, j) over j of other clusters,
    ascending (ties: lower j first); +inf where a row has fewer other-cluster images."""
    k = int(min(k, self.num_images - 1))
    rows = np.asarray(rows, np.int32)
    chunk = self.block * self.mesh.devices.size
    sharding = parallel.data_sharding(self.mesh)
    values = np.empty((len(rows), k + 1), np.float32)
    columns = np.empty((len(rows), k + 1), np.int32)
    starts = range(0, len(rows), chunk)

    def fetch(start, out):
      v, c = parallel.to_host(out)
      stop = min(start + chunk, len(rows))
      values[start:stop], columns[start:stop] = v[:stop - start], c[:stop - start]

    pending = None
    # Dispatch chunk t + 1 before fetching chunk t, so the device never waits on the host.
    for start in tqdm.tqdm(starts, desc=desc, leave=False, disable=None):
      part = np.full(chunk, -1, np.int32)
      part[:min(chunk, len(rows) - start)] = rows[start:start + chunk]
      out = _chunk_topk(parallel.put_global(part, sharding), self.flat, self.sq, self.labels,
                        self.sizes, self.penalty, mesh=self.mesh, k=k, constraint=self.constraint)
      if pending is not None:
        fetch(*pending)
      pending = (start, out)
    if pending is not None:
      fetch(*pending)
    return values, columns


def support_topk(features: Any, fake_features: Any, labels: Any, sizes: Any, size_penalty: float,
                 k: int, constraint: bool = True, *, block_size: int = 512,
                 matmul_dtype: str = 'float32', mesh: Mesh | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(values, columns) [N, k + 1] of every image's k + 1 nearest other-cluster images under the
  directional support-set distance (see the module docstring); inputs as for SupportSetKernel."""
  kernel = SupportSetKernel(support_array(features, fake_features), labels, sizes, size_penalty,
                            constraint, block_size=block_size, matmul_dtype=matmul_dtype,
                            mesh=mesh)
  return kernel.topk(np.arange(kernel.num_images), k)
