"""Ingest service: follows live HLS sources, samples frames, publishes chunk records to Kafka.

Pure logic (``playlist``, ``tracker``, ``sampler``, ``chunker``, ``encode``) is separate from
I/O at the edges (``fetch``, ``decode``, ``storage``); ``session`` runs one source end to end
and ``service`` wires sessions to the Kafka command and output topics.
"""
