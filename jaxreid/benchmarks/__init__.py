

def use_one_xla_thread() -> None:
  """One XLA:CPU thread (steadier numbers on a loaded machine); call before jax starts its CPU
  backend, which happens at the first device query."""
  import os
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
                             'false intra_op_parallelism_threads=1').strip()


def optional_torch(single_thread: bool):
  """The torch module for a same-run baseline, or None where it is not installed."""
  try:
    import torch
  except ImportError:
    return None
  if single_thread:
    torch.set_num_threads(1)
  return torch
