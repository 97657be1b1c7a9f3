"""One exception hierarchy: the CLI prints any ImageBuildError as one line and exits 1."""


class ImageBuildError(Exception):
    """A user-facing error: bad input, not a bug. str() is the one-line message."""


class ImageFormatError(ImageBuildError):
    """A disk image file is malformed (corrupt header, table out of range, ...)."""


class UnsupportedImageError(ImageBuildError):
    """A well-formed image uses a feature we refuse to handle (encryption, ...)."""


class ReadOnlyImageError(ImageBuildError):
    """A write to an image or file opened read-only."""


class OutOfRangeError(ImageBuildError):
    """I/O or a structure would fall outside the device or view it targets."""


class LayoutError(ImageBuildError):
    """A partition table or file system cannot be laid out as asked."""


class RecipeError(ImageBuildError):
    """A recipe file is missing, malformed or inconsistent."""


class TemplateError(ImageBuildError):
    """A boot-file template failed to render."""


class InputError(ImageBuildError):
    """Input files from the root are missing or unusable."""


class OutputError(ImageBuildError):
    """The output file cannot be written where it was asked (a directory, a device, disk full)."""


def show_path(path: object) -> str:
    """A file name for a one-line message: as is, or quoted when it holds a newline,
    a control character or bytes that are not UTF-8."""
    text = str(path)
    return text if text.isprintable() else repr(text)
