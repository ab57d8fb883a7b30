"""The re-ID network (paper III-C.1): backbone + head, lookup table and repelled loss, the
data-parallel train step, feature extraction, and the public FeatureExtractor."""

from jaxreid.reid.extract import FeatureExtractor, extract_features, extract_support_features
from jaxreid.reid.export import load_model, save_model
from jaxreid.reid.model import ReidNet, build_model
from jaxreid.reid.train import (NonFiniteLossError, TrainState, create_train_state, learning_rate,
                                make_train_step, reset_for_new_labels, train_epoch)

__all__ = [
    'FeatureExtractor', 'NonFiniteLossError', 'ReidNet', 'TrainState', 'build_model',
    'create_train_state', 'extract_features', 'extract_support_features', 'learning_rate',
    'load_model', 'make_train_step', 'reset_for_new_labels', 'save_model', 'train_epoch',
]
