"""HDF5 datasets: the schema, an atomic writer, a lazy reader and validation (docs/dataset.md)."""

from dckp.data.dataset import DEPTH_SCALE, SCHEMA_VERSION, Dataset, DatasetWriter, encode_depth

__all__ = ["DEPTH_SCALE", "SCHEMA_VERSION", "Dataset", "DatasetWriter", "encode_depth"]
