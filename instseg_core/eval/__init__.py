"""Evaluation: the official Cityscapes instance evaluator (in a child process), COCO mask AP, binary masks."""
