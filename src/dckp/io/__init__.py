"""Data in and out of dckp's HDF5 files: RGB-D recordings (`dckp import`, `dckp export`; the layouts in
docs/own-data.md) and robomimic's HDF5 (`dckp export --format robomimic`)."""
