

def use_one_xla_thread() -> None:
  """One XLA:CPU thread (steadier numbers on a loaded machine); call before jax starts its CPU
  backend, which happens at the first device query."""
  import os
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
                             'false intra_op_parallelism_threads=1').strip()


def use_the_runs_allocator() -> None:
  """Keeps freed host memory for reuse as the command-line runs do (JAXREID_KEEP_FREED_MEMORY=0
  measures glibc's default instead); torch, in the same process, gets the same setting. Call
  before jax starts its CPU backend."""
  from jaxreid import host_memory
  print(f'host memory kept for reuse: {host_memory.keep_freed_memory()}')


def optional_torch(single_thread: bool):
  """The torch module for a same-run baseline, or None where it is not installed."""
  try:
    import torch
  except ImportError:
    return None
  if single_thread:
    torch.set_num_threads(1)
  return torch
