"""Re-ID data: folder layouts, TFDS builders (array_record, no TensorFlow), the input pipeline.

  splits = load_splits(config.data, tfds_dir, synthetic_config=config.synthetic)
  train = splits['train']; train.image(0), train.camids, train.num_cameras
"""

from jaxreid.data.builders import (BUILDERS, DukemtmcReid, Market1501, Msmt17, ReidFolder,
                                   ReidSplit, load_split, load_splits, make_builder, prepare,
                                   splits_of)
from jaxreid.data.images import CorruptImageError
from jaxreid.data.layouts import (SPLITS, DataError, DataWarning, Record, check_cameras,
                                  market_layout_records, msmt17_records)

__all__ = [
    'BUILDERS', 'CorruptImageError', 'DataError', 'DataWarning', 'DukemtmcReid', 'Market1501',
    'Msmt17', 'Record', 'ReidFolder', 'ReidSplit', 'SPLITS', 'check_cameras', 'load_split',
    'load_splits', 'make_builder', 'market_layout_records', 'msmt17_records', 'prepare',
    'splits_of',
]
