"""The support-set distance kernel: for each real image, its k nearest images of OTHER clusters.

Each real image i has a support set S_i = {r_i, f_i^1 .. f_i^(L-1)} (its camera-style fakes, which
carry i's cluster). The image-level distance of the paper (REFERENCE.md, "Bottom-up merging") is

  D(i, j) = min over counted pairs (x, y) in S_i x S_j of |x - y|^2  +  lambda * (n(i) + n(j)),

counted pairs being real-real and real-fake (the clustering constraint), or all of S_i x S_j when
the constraint is off; without fakes L = 1 and only real-real pairs exist.

With the constraint, D(i, j) = min(A(i, j), A(j, i)) for the DIRECTIONAL distance
A(i, j) = min_{y in S_j} |r_i - y|^2 + penalty: the real of one image against the support set of
the other. A row block of A costs one matmul [block, d] x [d, N * L] (the floor of any method), so
the kernel returns, per row i, the k + 1 smallest A(i, .) over other-cluster columns; the k-th + 1
value bounds every entry the cut dropped, which is what the merge's exactness certificate needs
(see merge.py). Without the constraint A is symmetric and the rows carry the whole support set.

How it runs: the support matrix Y [L, N, d] (reals first, then the fakes, fake-major so the min over
a support set is a min over leading slabs) and its squared norms live on every device. Rows are
streamed in chunks of (devices x block) rows; each device takes one block of `block` rows, so
memory is O(block * N * L) per device plus Y, and only (rows, k + 1) values come back. The block
size depends on N and `block_size` only, never on the device count, and a row always sits at the
same offset of its block: each row sees the same matmul shape and summation order on 1 or 8
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

MATMUL_DTYPES = {'float32': np.float32, 'bfloat16': jnp.bfloat16}
# Block rows are a multiple of this, and a block never exceeds N / BLOCK_SPLIT rows (rounded up):
# small inputs do not pay for a mostly padded block. A constant, so blocks do not depend on devices.
_ROW_ALIGN = 8
_BLOCK_SPLIT = 8


def block_rows(num_images: int, block_size: int) -> int:
  """Rows per device block: `block_size`, smaller for small N; a function of N and block_size only."""
  per_split = -(-num_images // _BLOCK_SPLIT)
  return max(_ROW_ALIGN, min(int(block_size), -(-per_split // _ROW_ALIGN) * _ROW_ALIGN))


def support_matrix(features: np.ndarray, fake_features: np.ndarray | None,
                   matmul_dtype: str = 'float32') -> np.ndarray:
  """Host array Y [L, N, d] in the matmul dtype: Y[0] the reals, Y[l] the l-th fake of each image."""
  n, d = features.shape
  num_fakes = 0 if fake_features is None else fake_features.shape[1]
  y = np.empty((1 + num_fakes, n, d), MATMUL_DTYPES[matmul_dtype])
  y[0] = features
  for l in range(num_fakes):
    y[1 + l] = fake_features[:, l]
  return y


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


def _block_topk(rows, y, sq, labels, sizes, penalty, *, k: int, constraint: bool):
  """One device's block: the k + 1 smallest directional distances of `rows` to other clusters."""
  num_sets, n, d = y.shape
  flat = y.reshape(num_sets * n, d)
  rows_c = jnp.clip(rows, 0, n - 1)  # padding rows (-1) compute garbage that the host drops
  if constraint or num_sets == 1:
    # r_i against every support image: [B, L * N] -> min over the L slabs.
    g = _cross(flat[rows_c], flat).reshape(-1, num_sets, n)
    a = _min_over(g + sq[None], 1) + sq[0, rows_c][:, None]
  else:
    # Every support image of i against every support image of j.
    x = y[:, rows_c].reshape(-1, d)
    g = _cross(x, flat).reshape(num_sets, -1, num_sets, n)
    a = _min_over(_min_over(g + sq[None, None], 2) + sq[:, rows_c][:, :, None], 0)
  a = a + penalty * (sizes[rows_c][:, None] + sizes[None, :])
  a = jnp.where(labels[rows_c][:, None] == labels[None, :], jnp.inf, a)
  neg, idx = lax.top_k(-a, k + 1)
  return -neg, idx.astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _chunk_fn(mesh: Mesh, k: int, constraint: bool):
  """The jitted per-chunk kernel: rows split over 'data', everything else replicated."""
  kernel = functools.partial(_block_topk, k=k, constraint=constraint)
  mapped = jax.shard_map(kernel, mesh=mesh, in_specs=(P(parallel.DATA_AXIS), P(), P(), P(), P(),
                                                      P()),
                         out_specs=(P(parallel.DATA_AXIS), P(parallel.DATA_AXIS)))
  return jax.jit(mapped)


@jax.jit
def _squared_norms(y: jax.Array) -> jax.Array:
  y = y.astype(jnp.float32)
  return jnp.sum(y * y, axis=-1)


def _put(x: np.ndarray, sharding) -> jax.Array:
  """A global array from a host value every process holds in full (single- or multi-host)."""
  x = np.ascontiguousarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


class SupportSetKernel:
  """The support sets of one merge step on the device mesh, queried for per-row top-k candidates.

  features [N, d], fake_features None or [N, L-1, d], labels [N] cluster ids (only equality
  matters), sizes [N] the real-image size of each image's cluster at the start of the step.
  """

  def __init__(self, features: np.ndarray, fake_features: np.ndarray | None, labels: np.ndarray,
               sizes: np.ndarray, size_penalty: float, constraint: bool = True, *,
               block_size: int = 512, matmul_dtype: str = 'float32', mesh: Mesh | None = None):
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    self.num_images = len(features)
    self.constraint = bool(constraint)
    self.block = block_rows(self.num_images, block_size)
    rep = parallel.replicated(self.mesh)
    self.y = _put(support_matrix(features, fake_features, matmul_dtype), rep)
    self.sq = _squared_norms(self.y)
    self.labels = _put(np.asarray(labels, np.int32), rep)
    self.sizes = _put(np.asarray(sizes, np.float32), rep)
    self.penalty = _put(np.asarray(size_penalty, np.float32), rep)

  def topk(self, rows: np.ndarray, k: int, desc: str = 'merge distances'
           ) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) [len(rows), k + 1]: the k + 1 smallest A(i, j) over j of other clusters,
    ascending (ties: lower j first); +inf where a row has fewer other-cluster images."""
    k = int(min(k, self.num_images - 1))
    rows = np.asarray(rows, np.int32)
    chunk = self.block * self.mesh.devices.size
    fn = _chunk_fn(self.mesh, k, self.constraint)
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
      out = fn(_put(part, sharding), self.y, self.sq, self.labels, self.sizes, self.penalty)
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
  kernel = SupportSetKernel(np.asarray(features, np.float32),
                            None if fake_features is None else np.asarray(fake_features,
                                                                          np.float32),
                            labels, sizes, size_penalty, constraint, block_size=block_size,
                            matmul_dtype=matmul_dtype, mesh=mesh)
  return kernel.topk(np.arange(kernel.num_images), k)
