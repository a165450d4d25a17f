"""Storage: image-caption sources, image and caption validation, output sinks."""
