"""imagebuild: build 9front distribution disk images without a Plan 9 host."""

__version__ = "0.1.0"
