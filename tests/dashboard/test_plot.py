"""`fexec.plot()`: Lithops' timeline and histogram PNGs, drawn with matplotlib
from the stats of calls that ran on real runner processes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from matplotlib import image

import quelea


def slow_square(x):
    import time

    time.sleep(0.05)
    if x in (3, 11):
        raise ValueError(f"no {x}")
    return x * x


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_timeline_and_a_histogram(tmp_path, monkeypatch):
    config = {"localdisk": {"root": str(tmp_path / "storage")}, "local": {"workers": 2}}
    with quelea.FunctionExecutor(config=config) as fexec:
        fs = fexec.map(slow_square, range(24), chunksize=1)
        fexec.wait(fs, throw_except=False)
        timeline, histogram = fexec.plot(fs, dst=tmp_path / "out" / "job")
        assert timeline == str(tmp_path / "out" / "job_timeline.png")
        assert histogram == str(tmp_path / "out" / "job_histogram.png")
        for path in (timeline, histogram):
            assert png_size(tmp_path / path) == (1000, 600)
        # The failed calls are drawn in red, the others in blue.
        pixels = image.imread(timeline)[:, :, :3]
        red = np.all(np.abs(pixels - np.array([0xD6, 0x27, 0x28]) / 255) < 0.08, axis=2).sum()
        blue = np.all(np.abs(pixels - np.array([0x2B, 0x7B, 0xBA]) / 255) < 0.08, axis=2).sum()
        assert red > 20 and blue > red, (red, blue)
        # Two runners: at most two calls ran at once, and the bars say so.
        bars = image.imread(histogram)[:, :, :3]
        assert np.all(np.abs(bars - np.array([0x2B, 0x7B, 0xBA]) / 255) < 0.08, axis=2).sum() > 1000

        # No futures given: all of the executor's, under ./plots/<unix time>.
        monkeypatch.chdir(tmp_path)
        timeline, histogram = fexec.plot(figsize=(4, 3))
        assert timeline.startswith("plots/") and timeline.endswith("_timeline.png")
        assert png_size(tmp_path / timeline) == (400, 300)
        assert png_size(tmp_path / histogram) == (400, 300)

        with pytest.raises(ValueError, match="nothing to plot"):
            fexec.plot([])
