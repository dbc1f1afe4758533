"""``python -m infra.voice.unseen --door``: the voices never heard, their probes as a lock hears them at its door."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from infra.voice.unseen import Door, Voice


def test_a_door_is_read_from_its_rt60_snr_and_direct_to_reverb_ratio() -> None:
    assert Door.parse("0.3,30") == Door(0.3, 30.0, 0.0)
    assert Door.parse("0.6,20,10") == Door(0.6, 20.0, 10.0)
    for wrong in ("0.3", "0.3,30,10,1", "-1,30", "room,30", "0.002,30", "9,30"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            Door.parse(wrong)


def test_each_clip_is_heard_through_its_own_room_and_noise_and_the_same_way_every_run() -> None:
    t = np.arange(44_100 * 2) / 44_100
    clip = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    door = Door(0.3, 20.0)
    heard = door.hear(clip, [0, 1])
    assert heard.shape == clip.shape and heard.dtype == np.float32
    assert np.array_equal(heard, door.hear(clip, [0, 1]))  # reproducible
    assert not np.array_equal(heard, door.hear(clip, [0, 2]))  # another clip, another room and noise
    noise = Door(0.0, 20.0).hear(clip, [0, 1]) - clip  # RT60 0: no room, the noise alone at its SNR
    speech = np.sort(clip.astype(np.float64) ** 2)[len(clip) // 2 :].mean()  # the speech's power: the louder half
    snr = 10 * np.log10(speech / np.mean(noise.astype(np.float64) ** 2))
    assert snr == pytest.approx(20.0, abs=0.5)


def test_the_probes_are_the_clips_heard_at_the_door_and_enrollment_keeps_the_clean_ones() -> None:
    clean, heard = np.eye(3, dtype=np.float32), np.ones((3, 3), dtype=np.float32)
    voice = Voice("x", clean, np.ones(3, dtype=bool), heard)
    assert voice.probes is heard and voice.embedded is clean
    assert Voice("x", clean, np.ones(3, dtype=bool)).probes is clean
