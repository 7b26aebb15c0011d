"""Analyzer service: ONNX object detection on chunks, query targets -> events."""
