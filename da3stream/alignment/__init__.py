"""Pure geometry: Sim(3) algebra and Lie maps, Umeyama, robust registration, pose graphs, voxel grids.

Modules here take arrays and return arrays: no I/O, no config objects.
"""

from da3stream.alignment.sim3 import Sim3, cam_from_world_3x4_to_world_from_cam, invert_rigid
from da3stream.alignment.umeyama import umeyama
from da3stream.alignment.points import Correspondences, points_from_rays, sample_correspondences, unproject_depth
from da3stream.alignment.registration import (
    RegistrationResult,
    pose_based_estimate,
    quality_gate,
    register,
    transform_disagreement,
)
from da3stream.alignment.pose_graph import Edge, GraphResult, optimize_pose_graph
from da3stream.alignment.smoothing import blend_frame_poses, overlap_ramp

__all__ = [
    "Sim3",
    "cam_from_world_3x4_to_world_from_cam",
    "invert_rigid",
    "umeyama",
    "Correspondences",
    "points_from_rays",
    "sample_correspondences",
    "unproject_depth",
    "RegistrationResult",
    "pose_based_estimate",
    "quality_gate",
    "register",
    "transform_disagreement",
    "Edge",
    "GraphResult",
    "optimize_pose_graph",
    "blend_frame_poses",
    "overlap_ramp",
]
