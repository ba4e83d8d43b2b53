"""The labelling studio: a local web application to label a recorded rosbag2 with four clicks per object.

`instseg-studio BAG` (instseg_studio.cli) serves the page (static/) and a JSON API (app) on 127.0.0.1. Frames
come from the bag lazily (bag_frames), objects are segmented from their extreme points by the annotation
service node or in-process (segmenters), every change is saved atomically to a session file (session), and the
export goes through the same writer as `instseg-label` (instseg_core.data.label_export).
"""
