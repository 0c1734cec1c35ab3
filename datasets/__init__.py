"""HDF5 data sets: schema, writers, lazy readers (krylon, FNO .mat, PDEBench), conversion and generators (``krylon.datasets``)."""

from .conversion import convert
from .hdf5 import FORMAT, FORMAT_VERSION, DatasetWriter, H5Dataset, LazyH5Dataset, read_attrs, write_dataset
from .readers import LAYOUTS, detect_layout, open_dataset

__all__ = ["FORMAT", "FORMAT_VERSION", "LAYOUTS", "DatasetWriter", "H5Dataset", "LazyH5Dataset", "convert",
           "detect_layout", "open_dataset", "read_attrs", "write_dataset"]
