"""A check that a PNG written by a tutorial or command shows something: drawn data, not only empty axes."""
import matplotlib.image


def assert_drawn(path, min_pixels: int = 200 * 150) -> None:
    """The PNG at path is a real figure: at least min_pixels, and data drawn on it.

    Measured at 5.2 x 4 inches and 110 dpi: empty axes with labels leave 2.5 % non-white and 0 % coloured pixels;
    two plotted lines give 12 % and 8.8 %. A figure passes with > 0.5 % coloured pixels (lines, markers, colour
    maps) or > 6 % non-white ones (greyscale images).
    """
    image = matplotlib.image.imread(str(path))[..., :3]
    height, width = image.shape[:2]
    assert height * width >= min_pixels, f"{path}: {width} x {height} pixels"
    nonwhite = (image.min(-1) < 0.95).mean()
    coloured = (image.max(-1) - image.min(-1) > 0.2).mean()
    message = f"{path}: looks empty ({nonwhite:.3f} non-white, {coloured:.4f} coloured pixels)"
    assert coloured > 0.005 or nonwhite > 0.06, message
