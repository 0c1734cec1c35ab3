"""HDF5 data sets: schema, writers, lazy readers and generators (``krylon.datasets``)."""
