"""The build: plan every input, write the image, customize overlays, the demo root."""
