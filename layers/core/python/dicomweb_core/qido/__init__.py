"""QIDO-RS: search for studies, series and instances (PS3.18 §10.6, PS3.4 C.2.2.2)."""
