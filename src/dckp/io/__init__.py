"""Data in and out of dckp's HDF5 files: RGB-D recordings (`dckp import`, `dckp export-recording`; the layouts in
docs/own-data.md)."""
