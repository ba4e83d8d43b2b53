"""instseg_ros: thin rclpy glue for instseg (image codec, nodes, QoS, parameters, bag tools).

Importing this package imports no rclpy; the modules that need it import it themselves.
"""

__version__ = "0.1.0"
