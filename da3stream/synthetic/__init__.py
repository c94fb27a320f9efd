"""Synthetic worlds with exact ground truth: meshes, camera paths, rendering and presets.

Typical use::

    from da3stream.synthetic import make_sequence
    from da3stream.synthetic import SimulatedPredictor, SimParams

    seq = make_sequence("demo")                      # 300 frames, 320x240, rendered lazily
    predictor = SimulatedPredictor(seq, depth_hw=seq.image_hw, params=SimParams(), seed=0)
    seq.write_video("demo.mp4")                      # or feed seq.frames() to the pipeline
    seq.write_tum("demo_gt.tum")

See docs/SIMULATOR.md.
"""

from da3stream.synthetic.paths import (
    PATH_BUILDERS,
    CameraPath,
    block_loop,
    concat_paths,
    corridor_aliasing,
    drone_orbit,
    figure8,
    look_at,
    make_path,
    pose_from_angles,
    pure_rotation,
    robot_loop,
    static,
    walk,
)
from da3stream.synthetic.predictor import GroundTruth, SimParams, SimulatedPredictor
from da3stream.synthetic.render import cast, intrinsics_from_fov, render_views, scale_intrinsics
from da3stream.synthetic.sequence import (
    PRESETS,
    Preset,
    SyntheticSequence,
    make_sequence,
    read_tum,
    render_sequence,
    write_tum,
)
from da3stream.synthetic.worlds import (
    WORLD_BUILDERS,
    Material,
    MeshBuilder,
    World,
    city_world,
    corridor_world,
    ground_world,
    make_world,
    merge_worlds,
    room_world,
    textureless_world,
)

__all__ = [
    "PATH_BUILDERS", "CameraPath", "block_loop", "concat_paths", "corridor_aliasing", "drone_orbit", "figure8",
    "look_at", "make_path", "pose_from_angles", "pure_rotation", "robot_loop", "static", "walk",
    "GroundTruth", "SimParams", "SimulatedPredictor",
    "cast", "intrinsics_from_fov", "render_views", "scale_intrinsics",
    "PRESETS", "Preset", "SyntheticSequence", "make_sequence", "read_tum", "render_sequence", "write_tum",
    "WORLD_BUILDERS", "Material", "MeshBuilder", "World", "city_world", "corridor_world", "ground_world",
    "make_world", "merge_worlds", "room_world", "textureless_world",
]
