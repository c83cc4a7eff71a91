"""Video decoding, C3D feature extraction on Ray Data, importers and the synthetic video library."""
