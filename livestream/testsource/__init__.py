"""A live HLS test source: scripted real footage and photos, with ground truth, served over HTTP.

>>> from livestream.testsource import LiveHlsSource, default_script
>>> with LiveHlsSource(default_script()) as source:   # real time: ~40 s of live stream
...     print(source.url, default_script().truth())
...     source.wait_finished(timeout=60)
"""

from livestream.testsource.errors import ScriptError, TestSourceError
from livestream.testsource.hls import MASTER_PLAYLIST_NAME, MEDIA_PLAYLIST_NAME
from livestream.testsource.script import (
    COCO_LABELS,
    Clip,
    Photo,
    Scene,
    Script,
    Solid,
    TimedScene,
    default_script,
    load_script,
    script_from_description,
    short_script,
)
from livestream.testsource.server import HlsHttpServer, LiveHlsSource

__all__ = [
    "COCO_LABELS",
    "MASTER_PLAYLIST_NAME",
    "MEDIA_PLAYLIST_NAME",
    "Clip",
    "HlsHttpServer",
    "LiveHlsSource",
    "Photo",
    "Scene",
    "Script",
    "ScriptError",
    "Solid",
    "TestSourceError",
    "TimedScene",
    "default_script",
    "load_script",
    "script_from_description",
    "short_script",
]
