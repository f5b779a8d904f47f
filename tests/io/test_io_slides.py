"""Whole-slide reading (medinfer.io.slides) on tiny pyramidal TIFFs written with tifffile."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from medinfer.errors import BackendUnavailableError, InputError
from medinfer.data.slide_sets import TileReader
from medinfer.data.slide_tiles import tile_grid, tissue_mask
from medinfer.io.slides import Slide

openslide = pytest.importorskip("openslide")

WIDTH, HEIGHT, TILE, MPP = 2000, 1500, 256, 0.5
RED, BLUE = (200, 30, 30), (30, 30, 200)
# Level-0 boxes (x0, y0, x1, y1) of the patches, on multiples of 4 so every level is exact.
RED_BOX, BLUE_BOX = (256, 256, 768, 512), (1280, 1024, 1792, 1280)
SPECK = (1000, 200)  # a 4 x 4 black speck: one pixel of level 2, dust for the tissue mask


def slide_pixels() -> np.ndarray:
    """Level 0: white glass, a red and a blue patch, a speck of dust."""
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    for (x0, y0, x1, y1), colour in ((RED_BOX, RED), (BLUE_BOX, BLUE)):
        image[y0:y1, x0:x1] = colour
    image[SPECK[1]:SPECK[1] + 4, SPECK[0]:SPECK[0] + 4] = 0
    return image


def pyramid(image: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """Each level half the previous one (2 x 2 means)."""
    out = [image]
    for _ in range(levels - 1):
        a = out[-1].astype(np.uint16)
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w]
        out.append(((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4)
                   .astype(np.uint8))
    return out


def write_pyramid(path: Path, levels: list[np.ndarray], compression: str = "jpeg",
                  mpp: float | None = MPP) -> Path:
    """A generic pyramidal TIFF: one tiled page per level, resolution in pixels per cm."""
    with tifffile.TiffWriter(path) as tiff:
        for i, level in enumerate(levels):
            resolution = {} if mpp is None else {
                "resolution": (1e4 / (mpp * 2 ** i),) * 2, "resolutionunit": "CENTIMETER"}
            tiff.write(level, tile=(TILE, TILE), compression=compression, photometric="rgb",
                       subfiletype=0 if i == 0 else 1, **resolution)
    return path


@pytest.fixture(scope="module")
def levels() -> list[np.ndarray]:
    return pyramid(slide_pixels())


@pytest.fixture(scope="module", params=["jpeg", "zlib"])
def slide_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               levels: list[np.ndarray]) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    return write_pyramid(folder / f"slide-{request.param}.tiff", levels, request.param)


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory: pytest.TempPathFactory, levels: list[np.ndarray]) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("jpeg") / "slide.tiff", levels)


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to JPEG loss (mean error and the worst 0.1 % of pixels bounded)."""
    assert got.shape == expected.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.mean() < 2.0 and np.percentile(diff, 99.9) <= 40, (diff.mean(), diff.max())


# --- opening, info, regions -----------------------------------------------------------


def test_both_backends_report_the_same_info(slide_file: Path) -> None:
    with Slide.open(slide_file, backend="openslide") as a, \
            Slide.open(slide_file, backend="tiffslide") as b:
        assert (a.info.backend, b.info.backend) == ("openslide", "tiffslide")
        for info in (a.info, b.info):
            assert info.path == slide_file and info.vendor == "generic-tiff"
            assert info.dimensions == (WIDTH, HEIGHT)
            assert info.level_dimensions == ((2000, 1500), (1000, 750), (500, 375))
            assert info.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
            assert info.mpp == pytest.approx((MPP, MPP))


def test_default_backend_is_openslide(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide) as slide:
        assert slide.info.backend == "openslide"


def test_no_resolution_means_no_mpp(tmp_path: Path, levels: list[np.ndarray]) -> None:
    path = write_pyramid(tmp_path / "plain.tiff", levels, "zlib", mpp=None)
    for backend in ("openslide", "tiffslide"):
        with Slide.open(path, backend=backend) as slide:
            assert slide.info.mpp is None


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_read_region_puts_the_patches_in_place(slide_file: Path, levels: list[np.ndarray],
                                               backend: str, level: int) -> None:
    ds = 2 ** level
    x, y, w, h = 128, 192, 1600 // ds, 1200 // ds  # level-0 origin, level size
    with Slide.open(slide_file, backend=backend) as slide:
        got = slide.read_region(level, x, y, w, h)
    expected = levels[level][y // ds:y // ds + h, x // ds:x // ds + w]
    assert_close(got, expected)
    centre = got[(384 - y) // ds, (512 - x) // ds]
    assert np.abs(centre.astype(int) - RED).max() <= 12


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_region_beyond_the_edge_is_white(slide_file: Path, levels: list[np.ndarray],
                                         backend: str) -> None:
    with Slide.open(slide_file, backend=backend) as slide:
        corner = slide.read_region(0, WIDTH - 16, HEIGHT - 8, 32, 32)
        before = slide.read_region(1, -64, -64, 64, 64)  # 32 level-1 px before the slide
    assert (corner[8:] == 255).all() and (corner[:, 16:] == 255).all()
    assert_close(corner[:8, :16], levels[0][-8:, -16:])
    assert (before[:32] == 255).all() and (before[:, :32] == 255).all()
    assert_close(before[32:, 32:], levels[1][:32, :32])


# --- tiles and the cache ------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, slide: Slide) -> list[tuple]:
    """Record every read_region call of ``slide`` (the backend is reached only through it)."""
    calls: list[tuple] = []
    original = slide.read_region

    def read_region(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(slide, "read_region", read_region)
    return calls


def test_read_tile_is_served_from_the_cache(jpeg_slide: Path, levels: list[np.ndarray],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with Slide.open(jpeg_slide) as slide:
        calls = counting(monkeypatch, slide)
        first = slide.read_tile(1, 1, 0, TILE)
        again = slide.read_tile(1, 1, 0, TILE)
        info = slide.cache_info()
    assert len(calls) == 1 and again is first and not first.flags.writeable
    assert (info.hits, info.misses, info.tiles, info.nbytes) == (1, 1, 1, TILE * TILE * 3)
    assert_close(first, levels[1][:TILE, TILE:2 * TILE])


def test_cache_evicts_the_least_recently_used_beyond_its_size(
        jpeg_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Slide.open(jpeg_slide, cache_mb=1) as slide:  # 5 tiles of 192 KiB fit in 1 MiB
        calls = counting(monkeypatch, slide)
        for col in range(5):
            slide.read_tile(0, col, 0, TILE)
        slide.read_tile(0, 0, 0, TILE)  # now the most recent: (0, 1) goes first
        slide.read_tile(0, 5, 0, TILE)
        info = slide.cache_info()
        assert info.tiles == 5 and info.nbytes <= info.max_nbytes == 1024 * 1024
        slide.read_tile(0, 0, 0, TILE)
        assert len(calls) == 6
        slide.read_tile(0, 1, 0, TILE)
        assert len(calls) == 7


def test_cache_can_be_off(jpeg_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Slide.open(jpeg_slide, cache_mb=0) as slide:
        calls = counting(monkeypatch, slide)
        slide.read_tile(0, 0, 0, TILE)
        slide.read_tile(0, 0, 0, TILE)
        assert len(calls) == 2 and slide.cache_info().tiles == 0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_edge_tiles_are_padded_with_white(slide_file: Path, levels: list[np.ndarray],
                                          backend: str) -> None:
    with Slide.open(slide_file, backend=backend) as slide:
        tile = slide.read_tile(0, 7, 5, TILE)  # x 1792..2048 of 2000, y 1280..1536 of 1500
    assert tile.shape == (TILE, TILE, 3)
    assert (tile[:, 2000 - 1792:] == 255).all() and (tile[1500 - 1280:] == 255).all()
    assert_close(tile[:1500 - 1280, :2000 - 1792], levels[0][1280:, 1792:])


def test_thumbnail_comes_from_the_smallest_big_enough_level(
        jpeg_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Slide.open(jpeg_slide) as slide:
        calls = counting(monkeypatch, slide)
        thumb = slide.thumbnail(100)
        whole = slide.thumbnail(5000)  # never enlarged
    assert thumb.shape == (75, 100, 3) and whole.shape == (HEIGHT, WIDTH, 3)
    assert calls[0][0] == 2  # level 2 (500 px) is the smallest of at least 100 px
    assert np.abs(thumb[384 // 20, 512 // 20].astype(int) - RED).max() <= 12
    assert (thumb[2, 2] == 255).all()


@pytest.mark.parametrize(("downsample", "level"), [
    (0.5, 0), (1.0, 0), (1.9, 0), (2.0, 1), (3.0, 1), (3.999, 2), (4.0, 2), (100.0, 2)])
def test_best_level(jpeg_slide: Path, downsample: float, level: int) -> None:
    with Slide.open(jpeg_slide) as slide:
        assert slide.best_level(downsample) == level


# --- tissue mask, grid, batches -----------------------------------------------------------


def test_tissue_mask_finds_the_patches_not_the_glass_nor_the_dust(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide) as slide:
        mask, ds = tissue_mask(slide, max_side=500)
        default, default_ds = tissue_mask(slide)
    assert mask.shape == (375, 500) and mask.dtype == bool and ds == 4.0
    expected = np.zeros_like(mask)
    for x0, y0, x1, y1 in (RED_BOX, BLUE_BOX):
        expected[y0 // 4:y1 // 4, x0 // 4:x1 // 4] = True
    assert (mask == expected).mean() > 0.995
    assert not mask[SPECK[1] // 4 - 2:SPECK[1] // 4 + 3, SPECK[0] // 4 - 2:SPECK[0] // 4 + 3].any()
    assert default.shape == (HEIGHT, WIDTH) and default_ds == 1.0
    assert default[300:500, 300:700].all() and not default[:200].any()


def test_tissue_mask_of_empty_glass_is_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    glass = (235 + rng.integers(-6, 7, (512, 512, 3))).astype(np.uint8)
    path = write_pyramid(tmp_path / "glass.tiff", pyramid(glass, 2), "zlib")
    with Slide.open(path) as slide:
        mask, _ = tissue_mask(slide, max_side=256)
    assert not mask.any()


@pytest.mark.parametrize(("level", "expected"), [
    (0, [(256, 256), (512, 256), (1280, 1024), (1536, 1024)]),
    (1, [(0, 0), (512, 0), (1024, 1024), (1536, 1024)]),  # tiles of 512 level-0 px
])
def test_tile_grid_keeps_only_tiles_over_the_patches(jpeg_slide: Path, level: int,
                                                     expected: list[tuple[int, int]]) -> None:
    with Slide.open(jpeg_slide) as slide:
        mask = tissue_mask(slide, max_side=500)
        assert tile_grid(slide, TILE, level=level, mask=mask) == expected


def test_tile_grid_without_mask_covers_the_level(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide) as slide:
        grid = tile_grid(slide, TILE)
        overlapping = tile_grid(slide, TILE, overlap=64)
    assert len(grid) == 8 * 6 and grid[:2] == [(0, 0), (256, 0)] and grid[-1] == (1792, 1280)
    assert grid == sorted(grid, key=lambda p: (p[1], p[0]))  # row-major
    assert len(overlapping) == 11 * 8 and overlapping[1] == (192, 0)
    assert overlapping[11] == (0, 192) and overlapping[-1] == (1920, 1344)


def test_tile_grid_coverage_threshold(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide) as slide:
        mask = tissue_mask(slide, max_side=500)
        # tiles of 384 px straddle the patches' borders: a low threshold keeps more
        loose = tile_grid(slide, 384, mask=mask, min_fraction=0.01)
        strict = tile_grid(slide, 384, mask=mask, min_fraction=0.9)
    assert set(strict) < set(loose) and (384, 384) not in strict and (384, 0) in loose


def test_tile_batches_are_read_lazily(jpeg_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Slide.open(jpeg_slide) as slide:
        grid = tile_grid(slide, TILE, level=1)
        reader = TileReader(TILE, slide.info.level_downsamples[1], block=1)
        calls = counting(monkeypatch, slide)
        batches = reader.batches(slide, grid, 5)
        pixels, index = next(batches)
        assert len(calls) == 5  # lazy: one batch read at a time (a block of one tile each)
        rest = list(batches)
        assert pixels.shape == (5, TILE, TILE, 3) and list(index) == [0, 1, 2, 3, 4]
        assert [len(i) for _, i in rest] == [5, 2] and list(rest[-1][1]) == [len(grid) - 2, len(grid) - 1]
        np.testing.assert_array_equal(pixels[1], slide.read_region(1, *grid[1], TILE, TILE))


# --- errors and the fallback --------------------------------------------------------------


def check_error(error: pytest.ExceptionInfo[InputError], path: Path, *words: str) -> None:
    message = str(error.value)
    assert path.name in message and all(w in message for w in words), message


@pytest.mark.parametrize("backend", [None, "openslide", "tiffslide"])
def test_not_a_slide(tmp_path: Path, backend: str | None) -> None:
    from PIL import Image as PILImage

    png = tmp_path / "picture.tiff"
    PILImage.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png, format="PNG")
    noise = tmp_path / "noise.tiff"
    noise.write_bytes(np.random.default_rng(1).bytes(4096))
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    for path in (png, noise, empty):
        with pytest.raises(InputError) as error:
            Slide.open(path, backend=backend)
        check_error(error, path, "not a whole-slide image")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        Slide.open(tmp_path / "absent.svs")
    check_error(error, tmp_path / "absent.svs", "no such file")
    with pytest.raises(InputError, match="folder"):
        Slide.open(tmp_path)


def read_everything(slide: Slide) -> None:
    for level, (w, h) in enumerate(slide.info.level_dimensions):
        for row in range(-(-h // TILE)):
            for col in range(-(-w // TILE)):
                slide.read_tile(level, col, row, TILE)


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
@pytest.mark.parametrize("backend", [None, "openslide", "tiffslide"])
def test_a_file_cut_in_half_fails_cleanly(tmp_path: Path, levels: list[np.ndarray],
                                          compression: str, backend: str | None) -> None:
    path = write_pyramid(tmp_path / "cut.tiff", levels, compression)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError) as error:
        with Slide.open(path, backend=backend) as slide:
            read_everything(slide)
    check_error(error, path)


def move_level0_data_to_the_end(path: Path) -> int:
    """Rewrite ``path`` with level 0's tiles after everything else (as some scanners write
    them), so that cutting the file damages level 0 only; returns the old size."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    data = path.read_bytes()
    new, end = [], len(data)
    with path.open("ab") as f:
        for offset, count in zip(offsets, counts):
            new.append(end)
            f.write(data[offset:offset + count])
            end += count
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tiff.pages[0].tags["TileOffsets"].overwrite(new)
    return len(data)


def test_truncated_level0_opens_but_reads_fail_cleanly(tmp_path: Path,
                                                       levels: list[np.ndarray]) -> None:
    path = write_pyramid(tmp_path / "late.tiff", levels)
    before = move_level0_data_to_the_end(path)
    with Slide.open(path) as whole:  # the rewritten file is sound
        assert_close(whole.read_region(0, 0, 0, 800, 600), levels[0][:600, :800])
    with path.open("r+b") as f:
        f.truncate((before + os.path.getsize(path)) // 2)
    with Slide.open(path, backend="openslide") as slide:  # it hashes level 2 only
        assert_close(slide.read_region(2, 0, 0, 100, 100), levels[2][:100, :100])
        with pytest.raises(InputError) as error:
            read_everything(slide)
        check_error(error, path, "cannot read level 0")
        try:  # OpenSlide stays in error after a failed read; still an InputError
            slide.read_region(2, 0, 0, 100, 100)
        except InputError:
            pass
    with pytest.raises(InputError) as error:  # tiffslide would decode garbage: refused
        Slide.open(path, backend="tiffslide")
    check_error(error, path, "truncated")


def test_levels_and_regions_that_do_not_exist(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide) as slide:
        for level in (3, -1):
            with pytest.raises(InputError) as error:
                slide.read_region(level, 0, 0, 10, 10)
            check_error(error, jpeg_slide, f"level {level} does not exist", "3 levels")
        with pytest.raises(InputError, match="level 7 does not exist"):
            slide.read_tile(7, 0, 0, TILE)
        with pytest.raises(InputError) as error:
            slide.read_region(0, WIDTH, 0, 10, 10)
        check_error(error, jpeg_slide, "outside the slide")
        with pytest.raises(InputError, match="outside the slide"):
            slide.read_tile(1, 4, 0, TILE)  # level 1 is 1000 wide: tile 4 starts past it
        with pytest.raises(InputError, match="outside the slide"):
            slide.read_region(0, -100, -100, 50, 50)
        with pytest.raises(InputError):
            slide.read_region(0, 0, 0, 0, 10)


def test_huge_regions_are_refused(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide) as slide:
        with pytest.raises(InputError) as error:
            slide.read_region(0, 0, 0, 100_000, 100_000)
        check_error(error, jpeg_slide, "read_tile", "coarser level")
    with Slide.open(jpeg_slide, max_pixels=1000 * 1000) as slide:
        with pytest.raises(InputError, match="1000000 pixels"):
            slide.read_region(0, 0, 0, 1001, 1000)
        assert slide.read_region(0, 0, 0, 1000, 1000).shape == (1000, 1000, 3)
        assert slide.thumbnail(1000).shape == (750, 1000, 3)  # in strips under the limit


def test_tiffslide_when_asked(jpeg_slide: Path) -> None:
    with Slide.open(jpeg_slide, backend="tiffslide") as slide:
        assert slide.info.backend == "tiffslide"


def test_falls_back_to_tiffslide_when_openslide_cannot_open(
        jpeg_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> None:
        raise openslide.OpenSlideError("simulated: cannot open")

    monkeypatch.setattr(openslide, "OpenSlide", refuse)
    with Slide.open(jpeg_slide) as slide:
        assert slide.info.backend == "tiffslide"
        assert slide.read_region(0, 300, 300, 4, 4)[0, 0].tolist() == pytest.approx(RED, abs=12)
    with pytest.raises(InputError, match="simulated: cannot open"):
        Slide.open(jpeg_slide, backend="openslide")


def test_falls_back_to_tiffslide_without_openslide(jpeg_slide: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openslide", None)  # import fails
    with Slide.open(jpeg_slide) as slide:
        assert slide.info.backend == "tiffslide"
    with pytest.raises(BackendUnavailableError, match="openslide"):
        Slide.open(jpeg_slide, backend="openslide")


def test_bad_arguments(jpeg_slide: Path) -> None:
    with pytest.raises(ValueError, match="unknown slide backend"):
        Slide.open(jpeg_slide, backend="bioformats")
    slide = Slide.open(jpeg_slide)
    slide.close()
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        slide.read_region(0, 0, 0, 4, 4)


def test_alpha_is_composited_on_white() -> None:
    from medinfer.io.slides import _rgb

    rgba = np.array([[[200, 0, 0, 255], [200, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    assert _rgb(rgba).tolist() == [[[200, 0, 0], [255, 255, 255], [127, 127, 127]]]
    assert _rgb(np.array([[7, 9]], np.uint8)).tolist() == [[[7, 7, 7], [9, 9, 9]]]
