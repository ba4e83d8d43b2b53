"""Bag replay for labelling: play a recorded bag (paused pace, looped) next to the annotation service and RViz.

    ros2 launch instseg_ros labelling.launch.py bag:=/data/drive.mcap [rate:=0.5] [image:=/camera/image_raw]

Operators click extreme points in their tool, which calls /extreme_point_node/segment; `instseg-label`
turns the collected clicks into COCO / Cityscapes JSON offline.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = Path(get_package_share_directory("instseg_ros"))


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory or .mcap file"),
        DeclareLaunchArgument("rate", default_value="0.5"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw"),
        ExecuteProcess(cmd=["instseg-bag", "play", LaunchConfiguration("bag"), "--rate", LaunchConfiguration("rate"),
                            "--loop", "--clock"], output="screen"),
        Node(package="instseg_ros", executable="extreme_point_node", name="extreme_point_node", output="screen",
             parameters=[str(SHARE / "config" / "annotation.yaml")]),
        Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", str(SHARE / "rviz" / "instseg.rviz")]),
    ])
