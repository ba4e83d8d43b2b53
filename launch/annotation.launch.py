"""The annotation service: extreme_point_node serving ~/segment (SegmentObject).

    ros2 launch instseg_ros annotation.launch.py [config:=.../annotation.yaml]
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = Path(get_package_share_directory("instseg_ros"))


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(SHARE / "config" / "annotation.yaml")),
        Node(package="instseg_ros", executable="extreme_point_node", name="extreme_point_node", output="screen",
             parameters=[LaunchConfiguration("config")]),
    ])
