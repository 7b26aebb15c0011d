"""Aggregator service: folds session commands, ingest lifecycle and chunk results into SessionState.

Pure logic in ``reducer`` and ``merge``; the faust app (Kafka I/O) in ``app``.
"""
