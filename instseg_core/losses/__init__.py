"""Training losses: Spatial Embeddings (Lovasz hinge, seed and smoothness terms), Box2Pix, binary masks."""
