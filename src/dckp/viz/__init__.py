"""Pictures and videos: depth and segmentation colouring, frame grids, mp4 writing."""
