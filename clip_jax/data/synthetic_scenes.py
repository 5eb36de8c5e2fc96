"""Procedural scenes for the embedded synthetic image-text dataset: numpy rendering and captions.

Each scene is one object on a background, described by six attributes (shape, color, size, position,
texture, background). `render_scene` draws it and `make_captions` describes it with varied sentence
patterns. Everything is deterministic from a `numpy.random.Generator`, so a split is a pure function of its
seed. No tensorflow here: the TFDS builder in `synthetic.py` wraps these functions.

The zero-shot prompts (`zeroshot_tasks`) use words that no caption pattern contains ("photo", "picture",
"illustration", ...), so a model can only answer them by generalising from captions to prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
# Base RGB per color name; `render_scene` jitters them so a class is a region of color space, not a point.
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 220, 40),
    "green": (45, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 225),
    "purple": (135, 55, 200),
    "pink": (250, 135, 195),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "medium", "large")
# Object radius as a fraction of the image side, per size.
_SIZE_RADIUS = {"small": 0.14, "medium": 0.19, "large": 0.25}
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
_GRID = (0.3, 0.5, 0.7)
# Textures and backgrounds seen in training, and the ones only the shifted splits use.
TRAIN_TEXTURES = ("solid", "striped", "dotted")
SHIFT_TEXTURES = ("checkered", "wavy")
SKETCH_TEXTURE = "outline"
TEXTURES = TRAIN_TEXTURES + SHIFT_TEXTURES + (SKETCH_TEXTURE,)
TRAIN_BACKGROUNDS = ("light", "dark", "gradient")
SHIFT_BACKGROUNDS = ("pastel", "checkerboard", "clutter")
SKETCH_BACKGROUND = "white"
BACKGROUNDS = TRAIN_BACKGROUNDS + SHIFT_BACKGROUNDS + (SKETCH_BACKGROUND,)

# Rendering styles; each shifted split uses one (see synthetic.py for the split table).
STYLES = ("standard", "sketch", "new_background", "noise", "new_texture")
NOISE_STD = 0.15  # Gaussian pixel noise of the "noise" style, in units of the [0, 1] intensity range.
_SUPERSAMPLE = 2  # render at 2x and average 2x2 blocks, which antialiases the edges
_MAX_ROTATION_DEG = 15.0


@functools.lru_cache(maxsize=1)
def heldout_pairs() -> tuple[tuple[str, str], ...]:
    """(shape, color) pairs that never occur in train/test: every shape and color still occurs, with 7 of 8
    partners, so the held-out split tests composition of attributes the model has seen separately."""
    return tuple(
        (s, c)
        for i, s in enumerate(SHAPES)
        for j, c in enumerate(COLOR_NAMES)
        if (i + j) % len(COLOR_NAMES) == 0
    )


@functools.lru_cache(maxsize=1)
def seen_pairs() -> tuple[tuple[str, str], ...]:
    """(shape, color) pairs used by the train, test and shifted splits."""
    held = set(heldout_pairs())
    return tuple((s, c) for s in SHAPES for c in COLOR_NAMES if (s, c) not in held)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Attributes of one rendered scene (all are class names from the tuples above)."""

    shape: str
    color: str
    size: str
    position: str
    texture: str
    background: str


def sample_scene(rng: np.random.Generator, style: str, pairs: tuple[tuple[str, str], ...]) -> Scene:
    """Draw the attributes of a scene of `style`, its (shape, color) from `pairs`."""
    u = rng.random(5).tolist()
    shape, color = pairs[int(u[0] * len(pairs))]
    if style == "sketch":
        texture, background = SKETCH_TEXTURE, SKETCH_BACKGROUND
    else:
        texture = _pick(SHIFT_TEXTURES if style == "new_texture" else TRAIN_TEXTURES, u[1])
        background = _pick(SHIFT_BACKGROUNDS if style == "new_background" else TRAIN_BACKGROUNDS, u[2])
    return Scene(shape, color, _pick(SIZES, u[3]), _pick(POSITIONS, u[4]), texture, background)


def _pick(options: tuple, u: float):
    """The option at uniform draw `u` in [0, 1)."""
    return options[int(u * len(options))]


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def _star_polygon_radius(psi: np.ndarray, n: int, inner: float) -> np.ndarray:
    """Boundary radius at angle `psi` in [0, pi/n] from a vertex, of a polygon/star with outer radius 1.

    Outer vertices sit at multiples of 2*pi/n, inner ones (radius `inner`) half-way between; a regular
    n-gon is the star with inner = cos(pi/n). The edge between them is the straight line P1-P2.
    """
    alpha = math.pi / n
    ex, ey = inner * math.cos(alpha) - 1.0, inner * math.sin(alpha)
    return ey / (np.cos(psi) * ey - np.sin(psi) * ex)


def _polar_shape_mask(u: np.ndarray, v: np.ndarray, n: int, inner: float, phase: float) -> np.ndarray:
    rho = np.hypot(u, v)
    alpha = math.pi / n
    theta = np.mod(np.arctan2(v, u) - phase, 2 * alpha)
    psi = np.where(theta < alpha, theta, 2 * alpha - theta)
    return rho <= _star_polygon_radius(psi, n, inner)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates (unit = object radius; v points down, as image rows do)."""
    up = -math.pi / 2
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "square":
        return _polar_shape_mask(u / 1.1, v / 1.1, 4, math.cos(math.pi / 4), math.pi / 4)
    if shape == "diamond":
        return _polar_shape_mask(u / 1.15, v / 1.15, 4, math.cos(math.pi / 4), 0.0)
    if shape == "triangle":
        # Shift the centroid down so the triangle's bounding box is centred like the other shapes.
        return _polar_shape_mask(u / 1.2, (v - 0.2) / 1.2, 3, 0.5, up)
    if shape == "star":
        return _polar_shape_mask(u / 1.15, v / 1.15, 5, 0.42, up)
    if shape == "hexagon":
        return _polar_shape_mask(u, v, 6, math.cos(math.pi / 6), 0.0)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture_mask(texture: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where the object shows its darker shade (x, y in image units [0, 1])."""
    if texture == "solid":
        return np.zeros_like(x, dtype=bool)
    angle = rng.uniform(0, math.pi)
    a = x * math.cos(angle) + y * math.sin(angle)
    b = -x * math.sin(angle) + y * math.cos(angle)
    if texture == "striped":
        return np.mod(a / 0.075, 1.0) < 0.5
    if texture == "dotted":
        fu, fv = np.mod(a / 0.09, 1.0) - 0.5, np.mod(b / 0.09, 1.0) - 0.5
        return fu * fu + fv * fv <= 0.3**2
    if texture == "checkered":
        return (np.floor(a / 0.07) + np.floor(b / 0.07)) % 2 == 0
    if texture == "wavy":
        return np.mod((a + 0.025 * np.sin(2 * math.pi * b / 0.15)) / 0.09, 1.0) < 0.5
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def _background(name: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float RGB [H, W, 3] in [0, 1]."""
    h, w = x.shape
    tint = rng.uniform(-0.03, 0.03, size=3)
    if name == "light":
        return np.broadcast_to(rng.uniform(0.72, 0.95) + tint, (h, w, 3))
    if name == "dark":
        return np.broadcast_to(rng.uniform(0.05, 0.3) + tint, (h, w, 3))
    if name == "gradient":
        lo, hi = rng.uniform(0.05, 0.35), rng.uniform(0.65, 0.95)
        t = y if rng.random() < 0.5 else 1.0 - y
        return (lo + (hi - lo) * t)[..., None] + tint
    if name == "white":
        return np.broadcast_to(rng.uniform(0.94, 1.0) + tint / 3, (h, w, 3))
    if name == "pastel":
        # A pale, clearly hued background: the object colors never saw one in training.
        hue = rng.uniform(0.35, 0.9, size=3)
        return np.broadcast_to(0.55 + 0.4 * hue, (h, w, 3))
    if name == "checkerboard":
        lo, hi = rng.uniform(0.1, 0.35), rng.uniform(0.6, 0.9)
        cell = rng.uniform(0.08, 0.16)
        board = (np.floor(x / cell) + np.floor(y / cell)) % 2 == 0
        return np.where(board, hi, lo)[..., None] + tint
    if name == "clutter":
        # Smooth low-frequency color noise: a sum of a few random plane waves per channel.
        out = np.full((h, w, 3), 0.5)
        for c in range(3):
            for _ in range(3):
                fx, fy = (float(f) for f in rng.uniform(-4, 4, size=2))
                out[..., c] += 0.12 * np.sin(
                    2 * math.pi * (fx * x + fy * y) + float(rng.uniform(0, 2 * math.pi))
                )
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"unknown background {name!r}; expected one of {BACKGROUNDS}")


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion with a 4-neighbourhood, `steps` times (outside the image counts as outside)."""
    out = mask.copy()
    for _ in range(steps):
        shrunk = out.copy()
        shrunk[1:, :] &= out[:-1, :]
        shrunk[:-1, :] &= out[1:, :]
        shrunk[:, 1:] &= out[:, :-1]
        shrunk[:, :-1] &= out[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = shrunk[:, 0] = shrunk[:, -1] = False
        out = shrunk
    return out


def _block_mean(mask: np.ndarray, ss: int) -> np.ndarray:
    """Fraction of True in each ss x ss block, float32 [H/ss, W/ss, 1] (strided sums beat a reshaped mean)."""
    total = sum(mask[i::ss, j::ss].astype(np.float32) for i in range(ss) for j in range(ss))
    return (total * (1.0 / ss**2))[..., None]


@functools.lru_cache(maxsize=8)
def _pixel_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in [0, 1] of an n x n image, float32, read-only (shared)."""
    coords = ((np.arange(n) + 0.5) / n).astype(np.float32)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


def render_scene(
    scene: Scene, image_size: int, rng: np.random.Generator, style: str = "standard"
) -> np.ndarray:
    """Draw `scene` as uint8 [image_size, image_size, 3].

    `style` "sketch" draws only the outline, in the object's color; "noise" adds Gaussian pixel noise;
    the other styles differ only in which textures/backgrounds `sample_scene` picked.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    radius = _SIZE_RADIUS[scene.size] * rng.uniform(0.92, 1.08)
    row, col = divmod(POSITIONS.index(scene.position), 3)
    cx = _GRID[col] + rng.uniform(-0.04, 0.04)
    cy = _GRID[row] + rng.uniform(-0.04, 0.04)
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    base = np.asarray(COLORS[scene.color], np.float32) / 255.0
    color = np.clip(base * rng.uniform(0.88, 1.08) + rng.uniform(-0.05, 0.05, size=3), 0.0, 1.0)
    color = color.astype(np.float32)
    # Backgrounds are smooth (or axis-aligned), so they are drawn at the output resolution.
    y, x = _pixel_grid(image_size)
    image = np.array(_background(scene.background, x, y, rng), dtype=np.float32)

    # Only the object is supersampled, inside a box of 1.3 radii around its centre (every shape scales
    # to <= 1.2 radii), in output-pixel units [r0, r1) x [c0, c1).
    half = 1.3 * radius
    r0, r1 = max(0, int((cy - half) * image_size)), min(image_size, math.ceil((cy + half) * image_size) + 1)
    c0, c1 = max(0, int((cx - half) * image_size)), min(image_size, math.ceil((cx + half) * image_size) + 1)
    ss = _SUPERSAMPLE
    fy, fx = _pixel_grid(image_size * ss)
    by, bx = fy[r0 * ss : r1 * ss, c0 * ss : c1 * ss], fx[r0 * ss : r1 * ss, c0 * ss : c1 * ss]
    dx, dy = (bx - cx) / radius, (by - cy) / radius
    cos, sin = math.cos(angle), math.sin(angle)
    mask = _shape_mask(scene.shape, dx * cos + dy * sin, -dx * sin + dy * cos)
    if style == "sketch":
        # A stroke about 2.5 output pixels wide, independent of the supersampling factor.
        mask = mask & ~_erode(mask, max(1, round(2.5 * ss)))
        shade = np.zeros_like(mask)
    else:
        shade = _texture_mask(scene.texture, bx, by, rng) & mask
    # Average the ss x ss blocks: coverage of the object and of its darker shade, per output pixel.
    coverage = _block_mean(mask, ss)
    shaded = _block_mean(shade, ss)
    box = image[r0:r1, c0:c1]
    image[r0:r1, c0:c1] = box * (1.0 - coverage) + color * (coverage - 0.5 * shaded)

    if style == "noise":
        image += rng.normal(0.0, NOISE_STD, size=image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------

_SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium-sized", "mid-sized", "medium"),
    "large": ("large", "big", "huge"),
}
_TEXTURE_ADJ = {
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped",),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "checkered": ("checkered",),
    "wavy": ("wavy", "wave-patterned"),
    "outline": ("outlined", "hollow-drawn"),
}
_TEXTURE_PHRASE = {
    "solid": ("with no pattern", "filled in evenly"),
    "striped": ("with stripes", "covered in stripes"),
    "dotted": ("with dots", "covered in spots"),
    "checkered": ("with a checkered pattern", "covered in checks"),
    "wavy": ("with wavy lines", "covered in wavy stripes"),
    "outline": ("drawn as an outline", "shown only by its edge"),
}
_POSITION_PHRASE = {
    "top left": ("in the top left corner", "at the upper left"),
    "top": ("at the top", "near the top edge"),
    "top right": ("in the top right corner", "at the upper right"),
    "left": ("on the left", "at the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "at the right side"),
    "bottom left": ("in the bottom left corner", "at the lower left"),
    "bottom": ("at the bottom", "near the bottom edge"),
    "bottom right": ("in the bottom right corner", "at the lower right"),
}
_BACKGROUND_PHRASE = {
    "light": ("a light gray background", "a pale background"),
    "dark": ("a dark background", "a black background"),
    "gradient": ("a gray gradient", "a shaded background"),
    "pastel": ("a pastel background", "a softly colored background"),
    "checkerboard": ("a checkerboard", "a checkered backdrop"),
    "clutter": ("a blotchy colorful background", "a messy background"),
    "white": ("a white background", "blank white"),
}

# Sentence patterns; {a_...} fields carry the right indefinite article. None of them contains the words
# the zero-shot prompts use, which `tests/test_data_synthetic.py` checks over a generated train split.
CAPTION_PATTERNS = (
    "{a_color} {shape}",
    "{a_size} {color} {shape}",
    "{a_color} {shape} {position}",
    "there is {a_color} {shape} {position}",
    "{a_size} {texture} {color} {shape} on {background}",
    "{color} {shape}, {size}, {texture_phrase}",
    "this {shape} is {color}",
    "the {shape} {position} is {size} and {color}",
    "{a_texture} {shape} in {color} {position}",
    "one {color} {shape} {texture_phrase} on {background}",
    "{a_size} {shape} colored {color}",
    "{position} sits {a_color} {shape}",
    "{color}, {texture} {shape} against {background}",
    "a shape: {color} {shape}",
)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_captions(scene: Scene, rng: np.random.Generator, count: int) -> list[str]:
    """`count` captions of `scene` from distinct sentence patterns, with randomly chosen synonyms."""
    chosen = rng.permutation(len(CAPTION_PATTERNS))[:count]
    # One draw for all choices: per-call overhead of the numpy generator dominates otherwise.
    draws = rng.random((count, 6)).tolist()
    captions = []
    for k, u in zip(chosen, draws, strict=True):
        size = _pick(_SIZE_WORDS[scene.size], u[0])
        texture = _pick(_TEXTURE_ADJ[scene.texture], u[1])
        fields = {
            "shape": scene.shape,
            "color": scene.color,
            "size": size,
            "texture": texture,
            "a_color": _article(scene.color),
            "a_size": _article(size),
            "a_texture": _article(texture),
            "texture_phrase": _pick(_TEXTURE_PHRASE[scene.texture], u[2]),
            "position": _pick(_POSITION_PHRASE[scene.position], u[3]),
            "background": _pick(_BACKGROUND_PHRASE[scene.background], u[4]),
        }
        caption = CAPTION_PATTERNS[k].format(**fields)
        captions.append(caption[0].upper() + caption[1:] if u[5] < 0.5 else caption)
    return captions


# ----------------------------------------------------------------------------------------------------------
# Zero-shot tasks
# ----------------------------------------------------------------------------------------------------------

SHAPE_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an illustration of a {}.",
    "a rendering of a {}.",
    "a drawing of the {}.",
)
COLOR_TEMPLATES = (
    "a photo of something {}.",
    "a picture of a {} object.",
    "an illustration, mostly {}.",
    "a rendering of a {} thing.",
    "a drawing in {} ink.",
)
# Words that appear in prompts but in no caption pattern or phrase.
PROMPT_ONLY_WORDS = ("photo", "picture", "illustration", "rendering", "drawing")


def zeroshot_tasks() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{task: (class names, prompt templates)}; the task name is also the dataset's label feature."""
    return {"shape": (SHAPES, SHAPE_TEMPLATES), "color": (COLOR_NAMES, COLOR_TEMPLATES)}
