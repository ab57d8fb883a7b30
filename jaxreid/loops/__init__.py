"""The re-ID loops: Algorithm 1 (algorithm1.py, the paper's) and the density head (density.py).

Both evaluate, keep the best model and write their records through common.py.
"""
