"""Data: the Cityscapes reader and writer, the synthetic street-scene generator, camera bags, training samples."""
