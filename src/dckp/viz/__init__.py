"""Pictures and videos: depth and segmentation colouring, frame grids, mp4 writing; the 3D viewer (`view`) and the
hand-picking of reference keypoints (`picker`)."""
