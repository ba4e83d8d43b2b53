"""The PyTorch networks (Spatial Embeddings, Box2Pix, the extreme-point U-Net) and their NumPy output codings."""
