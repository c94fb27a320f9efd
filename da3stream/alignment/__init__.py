"""Pure geometry: Sim(3) algebra, robust registration, place recognition, pose graphs.

Modules here take arrays and return arrays: no I/O, no config objects.
"""

from da3stream.alignment.sim3 import Sim3, cam_from_world_3x4_to_world_from_cam, invert_rigid

__all__ = ["Sim3", "cam_from_world_3x4_to_world_from_cam", "invert_rigid"]
