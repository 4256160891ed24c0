"""Shared core of the serverless DICOMweb store (the CoreLayer, mounted at /opt/python)."""
