"""Rendered images and thumbnails (PS3.18 §10.4.1.1.3 Rendered Resources, §10.4.4 Thumbnail).

- ``parameters``: the rendered query parameters (§8.3.5.1: ``quality``, ``viewport``,
  ``window``, ``annotation``), validated on construction;
- ``pipeline``: stored pixels to 8 bits per channel in presentation order (modality LUT,
  VOI LUT, presentation LUT shape, colour);
- ``images``: the viewport's region and size, and encoding with Pillow (JPEG, PNG, GIF);
- ``selection``: which frames a resource renders, and which one represents it as a
  thumbnail;
- ``thumbnails``: where thumbnails are kept in S3 and how they are found again;
- ``service``: the two verbs, from a parsed request to a
  :class:`~dicomweb_core.web.reply.Reply`.

Pixels are read and decoded by ``dicom.pixels``, the module WADO-RS and the hooks use too.
numpy and Pillow come from the imaging layer: only the render function imports this package.
"""
