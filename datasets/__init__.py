"""HDF5 data sets: schema, writers, lazy readers and generators (``krylon.datasets``)."""

from .hdf5 import FORMAT, FORMAT_VERSION, DatasetWriter, H5Dataset, open_dataset, read_attrs, write_dataset

__all__ = ["FORMAT", "FORMAT_VERSION", "DatasetWriter", "H5Dataset", "open_dataset", "read_attrs", "write_dataset"]
