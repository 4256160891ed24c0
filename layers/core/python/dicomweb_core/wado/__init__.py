"""WADO-RS: retrieve instances, metadata, frames and bulk data (PS3.18 §10.4).

``service`` holds the verbs; ``media`` negotiates what to send (§8.7); ``replies`` sets
cache policy, validators and gzip; ``limits`` and ``redirects`` answer what is too large
for one function response. Pixel data is read and decoded by ``dicom.pixels``.
"""
