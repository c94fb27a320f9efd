"""The simulated DA3 predictor: error model, ground truth, noise, poses, descriptors.

``SimulatedPredictor`` (:mod:`.predictor`) drives the engine from ground truth
with DA3-like errors; :class:`SimParams` (:mod:`.params`) names every error
mode. The real network path (``da3stream.core``) never imports this package.
"""

from da3stream.synthetic.predictor.params import SimParams
from da3stream.synthetic.predictor.predictor import SimulatedPredictor
from da3stream.synthetic.predictor.truth import DepthFn, GroundTruth, SkyFn, da3_depth_hw, pixel_rays, scale_intrinsics

__all__ = ["DepthFn", "GroundTruth", "SimParams", "SimulatedPredictor", "SkyFn", "da3_depth_hw", "pixel_rays",
           "scale_intrinsics"]
