"""The application layer: models and images in, heatmaps and files out, on top of the core."""
