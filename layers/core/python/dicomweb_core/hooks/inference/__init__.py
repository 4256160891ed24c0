"""AI inference on stable series: the model contract, its loading, two backends and the result builders.

The modules stack in one direction, each importing only those listed before it:

- ``model``: what a model is (:class:`~dicomweb_core.hooks.inference.model.Model`), what it
  returns, and the validation of that untrusted output;
- ``volume``: slice order, voxel spacing and modality values of a series treated as a volume
  (PS3.3 C.7.6.2, C.11.1), the helpers models use;
- ``reference`` (a classic CPU-only CT body mask) and ``sagemaker`` (a SageMaker real-time
  endpoint): the two built-in backends;
- ``loading``: the ``INFERENCE_MODELS`` specification turned into models (built-in names or
  ``package.module:attribute`` plugins);
- ``results``: a result as a DICOM Segmentation (PS3.3 C.8.20) and a TID 1500 Comprehensive
  3D SR (PS3.16); ``pipeline``: the SeriesStable hook that runs the models and stores results.

Import those modules directly: this package stays import-light (no numpy here) so a handler
can import it cheaply.
"""
