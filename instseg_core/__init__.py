"""instseg_core: the ROS-free library of instseg (models, post-processing, data, runtime, evaluation).

Nothing under this package imports ROS; the ROS 2 glue lives in instseg_ros.
"""

__version__ = "0.1.0"
