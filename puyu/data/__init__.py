"""Training data: file formats -> samples -> tokenized, packed rows in a step-addressable order."""

from puyu.data.dataset import DataConfig, TrainData
from puyu.data.formats import FORMATS, Sample, read_samples
from puyu.data.packing import IGNORE, Batch, Example, collate, pack, tokenize_samples

__all__ = ["FORMATS", "IGNORE", "Batch", "DataConfig", "Example", "Sample", "TrainData",
           "collate", "pack", "read_samples", "tokenize_samples"]
