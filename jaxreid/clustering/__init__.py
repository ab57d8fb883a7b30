"""III-C.2: support-set distances (device, blocked top-k) and exact bottom-up merging (host)."""

from jaxreid.clustering.distance import SupportSetKernel, support_topk
from jaxreid.clustering.merge import MergeResult, merge_clusters, merge_step, walk

__all__ = ['MergeResult', 'SupportSetKernel', 'merge_clusters', 'merge_step', 'support_topk',
           'walk']
