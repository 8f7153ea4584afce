"""The files' time step, measured from file names: a window step the files do not have is refused
with the measured step and the fix; a whole multiple of it subsamples (every n-th file).
Nothing here decodes a file (the MRMS fields are 3500 x 7000): names and synthetic times only."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nowcast_jax.precip import archive
from nowcast_jax.precip import dataset as radar

T0 = datetime(2019, 6, 10, 0, 0)
MRMS_PATTERN = "PrecipRate_00.00_%Y%m%d-%H%M%S"


def _events(*runs: tuple[datetime, int, float]) -> list[archive.Event]:
    """Events of ``n`` frames ``minutes`` apart from ``start`` (file names are not needed)."""
    frames = [archive.Frame(start + timedelta(minutes=minutes * i), f"/x/{start:%Y%m%d%H%M}_{i}")
              for start, n, minutes in runs for i in range(n)]
    return archive.group_events(frames)


def test_the_step_is_the_median_spacing_within_events():
    two_min = _events((T0, 36, 2))
    assert archive.event_time_step(two_min[0]) == 2.0
    holed = archive.Event("x", tuple(f for i, f in enumerate(two_min[0].frames) if i not in (5, 9, 20)))
    assert archive.event_time_step(holed) == 2.0  # missing files do not change it
    assert archive.event_time_step(archive.Event("one", two_min[0].frames[:1])) is None
    assert archive.check_time_step(two_min, 2, 15) == 2.0


@pytest.mark.parametrize("step", [5, 1, 3, 2.5])
def test_a_step_the_files_do_not_have_is_refused_with_the_fix(step):
    """2-min files (MRMS) at ``data.timestep_minutes=5`` used to end in "split 'train' has no windows"."""
    with pytest.raises(ValueError) as err:
        archive.check_time_step(_events((T0, 36, 2)), step, 15)
    assert str(err.value) == (
        f"data.timestep_minutes={step:g} but the files are 2 min apart (median spacing of consecutive files "
        "within events; 1 event, 36 files): set data.timestep_minutes=2 (the files' step) or a multiple of it "
        "(4, 6, 8, ...: windows then take every n-th file)")


def test_a_multiple_of_the_files_step_subsamples():
    """6-min windows on 2-min files take every third file; the check lets them through."""
    events = _events((T0, 36, 2))
    assert archive.check_time_step(events, 6, 10) == 2.0
    windows, dropped = archive.find_frame_windows(events[0].times, 6, 10)
    assert windows[0].tolist() == list(range(0, 28, 3)) and dropped == 0
    assert len(windows) == 36 - 27  # starts 0..8 (t0 + 54 min <= 70 min)
    times = events[0].times
    assert all(times[w[k + 1]] - times[w[k]] == timedelta(minutes=6) for w in windows for k in range(9))


def test_no_event_long_enough_for_one_window_names_the_span():
    with pytest.raises(ValueError, match=r"^no event holds a window of 15 frames \(data.input_frames \+ "
                                         r"data.output_frames\) at data.timestep_minutes=6: that needs 84 min of "
                                         r"files without a gap, the longest event 20190610T0000 spans 70 min \(36 "
                                         r"files, 2 min apart\); use a smaller data.timestep_minutes \(the files' "
                                         r"step or a multiple of it, e.g. 4\)"):
        archive.check_time_step(_events((T0, 36, 2)), 6, 15)
    with pytest.raises(ValueError, match="must be > 0"):
        archive.check_time_step(_events((T0, 36, 2)), 0, 15)


def test_events_of_different_steps_are_named():
    events = _events((T0, 61, 6), (T0 + timedelta(days=1), 144, 10))
    with pytest.raises(ValueError, match=r"data.timestep_minutes=6 is not a whole multiple of the files' step in "
                                         r"event\(s\) 20190611T0000 \(10 min\) \(steps in this archive: 6 min, 10 "
                                         r"min\): set data.timestep_minutes=30"):
        archive.check_time_step(events, 6, 15)
    assert archive.check_time_step(events, 30, 5) == 6.0
    # an event too short for any window is not measured (its files can hold no window anyway)
    assert archive.check_time_step(_events((T0, 40, 5), (T0 + timedelta(days=1), 3, 7)), 5, 15) == 5.0


@pytest.mark.data
def test_real_mrms_file_names(radar_dir):
    """The shared MRMS event (36 PrecipRate files, 2 min): its names only, never decoded."""
    names = sorted((radar_dir / "mrms" / "20190610").glob("PrecipRate_*"))
    if len(names) < 2:
        pytest.skip(f"no MRMS files under {radar_dir / 'mrms' / '20190610'}")
    events = archive.group_events(archive.list_frames([str(p) for p in names], MRMS_PATTERN))
    assert [len(e.frames) for e in events] == [36] and archive.event_time_step(events[0]) == 2.0
    with pytest.raises(ValueError, match=r"data.timestep_minutes=5 but the files are 2 min apart .* set "
                                         r"data.timestep_minutes=2 \(the files' step\)"):
        archive.check_time_step(events, 5, 15)
    assert archive.check_time_step(events, 2, 15) == 2.0 == archive.check_time_step(events, 4, 15)


def _never_read(paths, cache_dir=None):
    raise AssertionError("the step is checked from file names, before any file is decoded")


def test_the_dataset_refuses_a_step_the_files_do_not_have(tmp_path: Path):
    """``RadarDataset`` of 2-min files at a 5-min step: the error when the archive is opened, nothing
    decoded (needs ``RadarDataset.__post_init__`` to call ``archive.check_time_step``); at 4 min (a
    multiple) every window's files are 4 min apart."""
    for i in range(36):
        (tmp_path / f"{T0 + timedelta(minutes=2 * i):PrecipRate_00.00_%Y%m%d-%H%M%S}.grib2").write_bytes(b"")
    files = str(tmp_path / "*.grib2")
    with pytest.raises(ValueError, match=r"data.timestep_minutes=5 but the files are 2 min apart"):
        radar.RadarDataset.open(files, MRMS_PATTERN, _never_read, 5, 5, 10, test_events=())
    ds = radar.RadarDataset.open(files, MRMS_PATTERN, _never_read, 4, 5, 10, test_events=())
    assert ds.stats["windows"] == 36 - 28 and ds.window_frames[0].tolist() == list(range(0, 30, 2))
