"""Exports from a run store: TUM/KITTI, PLY, COLMAP, nerfstudio, depth images, colour maps."""
