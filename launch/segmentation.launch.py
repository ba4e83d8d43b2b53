"""Segmentation on a camera topic: segmentation_node (+ RViz with the overlay and id images).

    ros2 launch instseg_ros segmentation.launch.py image:=/camera/image_raw [config:=.../segmentation_gpu.yaml]
        [rviz:=true]
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = Path(get_package_share_directory("instseg_ros"))


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera topic"),
        DeclareLaunchArgument("config", default_value=str(SHARE / "config" / "segmentation.yaml")),
        DeclareLaunchArgument("rviz", default_value="true"),
        Node(package="instseg_ros", executable="segmentation_node", name="segmentation_node", output="screen",
             parameters=[LaunchConfiguration("config")],
             remappings=[("image", LaunchConfiguration("image")),
                         ("image/compressed", [LaunchConfiguration("image"), "/compressed"])]),
        Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", str(SHARE / "rviz" / "instseg.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
