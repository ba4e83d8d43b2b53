"""Cross-process ROS 2 tests over real Fast DDS (each peer a separate rclpy process, see ros_peers.py)."""

from __future__ import annotations

import pytest

from instseg_ros import isolation

pytestmark = pytest.mark.ros


def test_pytest_process_is_loopback_only() -> None:
    up = isolation.interfaces_up()
    assert up == {"lo": True}, f"tests must run in a namespace whose only interface is lo, got {up}"


def test_ros_process_sees_only_loopback(ros_processes) -> None:
    """Where the ROS tests run, only `lo` exists and is up, and the ROS environment is the isolated one."""
    result = ros_processes.wait(ros_processes.start("net-info"), timeout=30).result
    assert result["interfaces"] == {"lo": True}
    assert result["domain_id"] == str(ros_processes.domain_id)
    assert result["transports"] == isolation.LOCAL_TRANSPORTS
    assert result["node"] == "/net_info"


def test_images_cross_process_all_fields_equal(ros_processes) -> None:
    """Three 2048x1024 rgb8 frames, a padded big-endian mono16 and a 32FC1 frame go through the codec,
    over DDS, into another process; every field and pixel arrives unchanged."""
    subscriber = ros_processes.start("sub-images", "--timeout", "60")
    publisher = ros_processes.start("pub-images", "--timeout", "60")
    pub = ros_processes.wait(publisher, timeout=90).result
    sub = ros_processes.wait(subscriber, timeout=90).result
    assert pub == {"published": 5, "acked": True}
    assert sub["received"] == [0, 1, 2, 3, 4]
    assert sub["mismatches"] == []


def test_instance_array_cross_process(ros_processes) -> None:
    subscriber = ros_processes.start("sub-instances")
    publisher = ros_processes.start("pub-instances")
    assert ros_processes.wait(publisher, timeout=60).result["acked"] is True
    sub = ros_processes.wait(subscriber, timeout=60).result
    assert sub["received"] == 1
    assert sub["equal"] is True
    assert sub["classes"] == ["car", "person", "bicycle"]
    assert sub["polygons"][2] == [30, 60, 120, 60, 75, 180]
    assert sub["bbox_widths"] == [31, 32, 33]
    assert sub["model_name"] == "spatial_embeddings"
    assert sub["stamp"] == [42, 7]


def test_segment_object_service_round_trip(ros_processes) -> None:
    """A full-size request and three bad ones against a small test server in another process."""
    server = ros_processes.start("serve-segment", "--requests", "4", "--timeout", "60")
    client = ros_processes.start("call-segment")
    result = ros_processes.wait(client, timeout=90).result
    assert ros_processes.wait(server, timeout=30).result == {"served": 4}
    assert result["success"] is True
    assert result["mask_equal"] is True
    assert result["mask_encoding"] == "mono8"
    assert result["mask_header_equal"] is True
    assert result["polygon"] == [100, 500, 900, 120, 1700, 480, 950, 1000]
    errors = result["errors"]
    assert errors["bad_count"][:2] == [False, 1] and "got 6" in errors["bad_count"][2]
    assert errors["outside"][:2] == [False, 2] and "outside" in errors["outside"][2]
    assert errors["truncated"][:2] == [False, 4] and "truncated" in errors["truncated"][2]
