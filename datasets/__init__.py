"""Dataset converters, downloads and the registry (installed as ``hfmeta.datasets``).

- :mod:`.registry`   the datasets known by name, the data directory, ``prepare``
- :mod:`.hdf5`       the common HDF5 writer (layout documented there)
- :mod:`.download`   resumable, checksum-checked HTTP(S) downloads
- :mod:`.mnist`, :mod:`.cifar10`, :mod:`.imagenet32`   converters from the official files
- :mod:`.make_mnist5k`   builds the shipped ``mnist5k.h5``
"""
from .registry import DATASETS, data_dir, default_path, find_prepared, prepare, resolve

__all__ = ["DATASETS", "data_dir", "default_path", "find_prepared", "prepare", "resolve"]
