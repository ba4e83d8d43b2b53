"""Labelling: the annotation service and the labelling studio on a recorded bag.

    ros2 launch instseg_ros labelling.launch.py bag:=/data/drive.mcap [topic:=/camera/image_raw] [port:=8080]
                                                [out:=/data/drive.studio]

Starts extreme_point_node (config/annotation.yaml) and `instseg-studio BAG --segmenter service`, which reads the
bag itself and sends each frame once to the node, then only the clicked points. Open http://127.0.0.1:PORT/ in a
browser. `instseg-label` turns the studio's exported clicks.json (or hand-written clicks) into the same COCO /
Cityscapes files offline.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = Path(get_package_share_directory("instseg_ros"))


def generate_launch_description() -> LaunchDescription:
    bag, topic, port, out = (LaunchConfiguration(name) for name in ("bag", "topic", "port", "out"))
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory or .mcap file"),
        DeclareLaunchArgument("topic", default_value="", description="image topic (needed if the bag has several)"),
        DeclareLaunchArgument("port", default_value="8080"),
        DeclareLaunchArgument("out", default_value="", description="session and export folder (default BAG.studio)"),
        Node(package="instseg_ros", executable="extreme_point_node", name="extreme_point_node", output="screen",
             parameters=[str(SHARE / "config" / "annotation.yaml")]),
        ExecuteProcess(cmd=["instseg-studio", bag, "--segmenter", "service", "--port", port, "--topic", topic,
                            "--out", out], output="screen"),
    ])
