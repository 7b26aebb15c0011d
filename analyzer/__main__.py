"""``python -m analyzer``: run one analyzer replica until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from analyzer.classifier import ImageClassifier
from analyzer.detector import ObjectDetector, default_intra_op_threads
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import AnalyzerService, ChunkAnalyzer
from analyzer.settings import AnalyzerSettings
from analyzer.thumbnails import ThumbnailWriter
from livestream.blobstore import open_blob_store
from livestream.blobstore.settings import BlobStoreSettings
from livestream.service import lower_cpu_priority, run_service


async def _main(settings: AnalyzerSettings) -> None:
    detector = ObjectDetector.load(
        settings.model_path or default_model_path(),
        settings.providers,
        max_batch=settings.inference_batch,
        pipeline=settings.detector_pipeline,
        precision=settings.detector_precision,
        input_size=settings.detector_input_size,
        heads=settings.detector_heads,
        intra_op_threads=settings.intra_op_threads,
    )
    policy = ScoringPolicy(
        threshold=settings.threshold,
        max_gap_frames=settings.max_gap_frames,
        classifier_min_probability=settings.classifier_min_probability,
        classifier_top_k=settings.classifier_top_k,
        open_query_threshold=settings.open_query_threshold,
    )

    def load_classifier() -> ImageClassifier:
        # Loaded on the first chunk whose query needs it, in the inference thread.
        threads = settings.classifier_threads or settings.intra_op_threads or default_intra_op_threads()
        return ImageClassifier.load(providers=settings.providers, intra_op_threads=threads)

    # Thumbnails go where the recordings are (same LIVESTREAM_STORAGE_* settings as ingest and API).
    thumbnails = (
        ThumbnailWriter(open_blob_store(BlobStoreSettings()), quality=settings.thumbnail_jpeg_quality)
        if settings.thumbnails
        else None
    )
    analyzer = ChunkAnalyzer(
        detector,
        policy,
        settings.instance_id,
        load_classifier=load_classifier,
        decode_threads=settings.decode_threads,
        unchanged_max_change=settings.unchanged_max_change,
    )
    service = AnalyzerService(settings, analyzer, thumbnails)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()


def main() -> int:
    settings = AnalyzerSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Before the event loop, onnxruntime and the decoding pool start their threads: they inherit it.
    niceness = lower_cpu_priority(settings.cpu_nice)
    logging.getLogger("analyzer").info("running at nice %d (LIVESTREAM_ANALYZER_CPU_NICE)", niceness)
    return run_service("analyzer", lambda: _main(settings))


if __name__ == "__main__":
    raise SystemExit(main())
