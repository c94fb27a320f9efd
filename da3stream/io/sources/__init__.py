"""Frame sources: PyAV video, image folders, ROS bags, calibration, pose priors, and open_source."""
